//! hull's nftables table (`ip hull`), rebuilt whole from the networks and
//! the attached containers whenever either changes, through `nft -j -f FILE`
//! (JSON in a file, never a command line assembled from strings):
//! - `postrouting` (nat): masquerade what leaves a non-internal network's
//!   subnet for elsewhere, and what reaches a container from 127.0.0.0/8;
//! - `prerouting` and `output` (nat): DNAT of published ports, for traffic
//!   from outside and from the host itself (127.0.0.1 too);
//! - `forward` (filter): no traffic between two networks; an internal
//!   network's traffic stays on its bridge;
//! - `input` (filter): an internal network reaches only its gateway's
//!   address on the host.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::{Attachment, Network};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft (apt-get install nftables)")]
    Spawn(#[source] std::io::Error),
    #[error("writing hull's nftables rules")]
    Write(#[source] std::io::Error),
    #[error("nft refused hull's rules: {0}")]
    Refused(String),
}

const TABLE: &str = "hull";

fn rule(chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": chain, "expr": expr}}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn prefix(net: &super::Subnet) -> Value {
    json!({"prefix": {"addr": net.addr.to_string(), "len": net.prefix_len}})
}

/// The whole table for `networks` and the containers `attached` to them.
pub fn ruleset(networks: &[Network], attached: &[Attachment]) -> Value {
    let table = json!({"family": "ip", "name": TABLE});
    let mut cmds = vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
    ];
    for (name, kind, hook, prio) in [
        ("prerouting", "nat", "prerouting", -100),
        ("output", "nat", "output", -100),
        ("postrouting", "nat", "postrouting", 100),
        ("forward", "filter", "forward", 0),
        ("input", "filter", "input", 0),
    ] {
        cmds.push(json!({"add": {"chain": {
            "family": "ip", "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"
        }}}));
    }
    for n in networks {
        let br = json!(n.bridge);
        if n.internal {
            // Only the gateway's own address is reachable on the host.
            cmds.push(rule(
                "input",
                vec![
                    eq(meta("iifname"), br.clone()),
                    ne(payload("ip", "daddr"), json!(n.gateway.to_string())),
                    json!({"drop": null}),
                ],
            ));
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    ne(meta("oifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("oifname"), br.clone()),
                    ne(meta("iifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
        } else {
            cmds.push(rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(&n.subnet)),
                    ne(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        cmds.push(rule(
            "postrouting",
            vec![
                eq(
                    payload("ip", "saddr"),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                ),
                eq(meta("oifname"), br.clone()),
                json!({"masquerade": null}),
            ],
        ));
        for other in networks.iter().filter(|o| o.bridge != n.bridge) {
            cmds.push(rule(
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    eq(meta("oifname"), json!(other.bridge)),
                    json!({"drop": null}),
                ],
            ));
        }
    }
    for a in attached {
        for p in &a.ports {
            let mut m = Vec::new();
            match p.host_ip {
                Some(ip) => m.push(eq(payload("ip", "daddr"), json!(ip.to_string()))),
                None => m.push(eq(
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                )),
            }
            m.push(eq(payload(p.proto.name(), "dport"), json!(p.host_port)));
            m.push(json!({"dnat": {"addr": a.ip.to_string(), "port": p.container_port}}));
            cmds.push(rule("prerouting", m.clone()));
            cmds.push(rule("output", m));
        }
    }
    json!({"nftables": cmds})
}

/// Replaces hull's table with `ruleset` (one nft transaction), or removes
/// it when there is nothing to put in it. The JSON goes through `file` (the
/// last ruleset stays there to look at; not every host has /dev/stdin).
pub fn apply(ruleset: &Value, empty: bool, file: &Path) -> Result<(), FirewallError> {
    let input = if empty {
        let table = json!({"family": "ip", "name": TABLE});
        json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
    } else {
        ruleset.clone()
    };
    std::fs::write(
        file,
        serde_json::to_vec_pretty(&input).expect("JSON serializes"),
    )
    .map_err(FirewallError::Write)?;
    let out = Command::new("nft")
        .args(["-j", "-f"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .map_err(FirewallError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(FirewallError::Refused(
            err.lines().next().unwrap_or("").trim().to_string(),
        ));
    }
    Ok(())
}
