//! hull's nftables tables (`ip hull`, and `ip6 hull` while a dual-stack
//! network is in use), rebuilt whole from the networks and
//! the attached containers whenever either changes, through `nft -j -f FILE`
//! (JSON in a file, never a command line assembled from strings):
//! - `postrouting` (nat): masquerade what leaves a non-internal network's
//!   subnet for elsewhere, and what reaches a container from 127.0.0.0/8;
//! - `prerouting` and `output` (nat): DNAT of published ports, for traffic
//!   from outside and from the host itself (127.0.0.1 too; not ::1, which
//!   the port proxy serves);
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

/// An nftables family hull keeps a table in: `ip`, and `ip6` while a
/// dual-stack network is in use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

fn rule(family: Family, chain: &str, expr: Vec<Value>) -> Value {
    json!({"add": {"rule": {"family": family.name(), "table": TABLE, "chain": chain, "expr": expr}}})
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

fn prefix(addr: String, len: u8) -> Value {
    json!({"prefix": {"addr": addr, "len": len}})
}

/// The whole of hull's tables for `networks` and the containers
/// `attached` to them: `ip hull`, and `ip6 hull` when a network is dual
/// stack (docker's rules with ip6tables on: masquerade, isolation,
/// published ports to the container's IPv6 address).
pub fn ruleset(networks: &[Network], attached: &[Attachment]) -> Value {
    let mut cmds = table(Family::V4);
    if networks.iter().any(|n| n.subnet6.is_some()) {
        cmds.extend(table(Family::V6));
        cmds.extend(rules(Family::V6, networks, attached));
    } else {
        cmds.extend(drop_table(Family::V6));
    }
    cmds.extend(rules(Family::V4, networks, attached));
    json!({"nftables": cmds})
}

/// Commands that leave `family`'s table absent.
fn drop_table(family: Family) -> Vec<Value> {
    let table = json!({"family": family.name(), "name": TABLE});
    vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
    ]
}

/// Commands that make `family`'s table afresh, with its chains.
fn table(family: Family) -> Vec<Value> {
    let mut cmds = drop_table(family);
    cmds.push(json!({"add": {"table": {"family": family.name(), "name": TABLE}}}));
    for (name, kind, hook, prio) in [
        ("prerouting", "nat", "prerouting", -100),
        ("output", "nat", "output", -100),
        ("postrouting", "nat", "postrouting", 100),
        ("forward", "filter", "forward", 0),
        ("input", "filter", "input", 0),
    ] {
        cmds.push(json!({"add": {"chain": {
            "family": family.name(), "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"
        }}}));
    }
    cmds
}

fn rules(family: Family, networks: &[Network], attached: &[Attachment]) -> Vec<Value> {
    let f = family;
    let ip = f.name();
    let mut cmds = Vec::new();
    for n in networks {
        let br = json!(n.bridge);
        // This family's subnet and gateway (an IPv4-only network has none
        // in ip6: its bridge still gets the isolation rules there).
        let own = match f {
            Family::V4 => Some((
                prefix(n.subnet.addr.to_string(), n.subnet.prefix_len),
                n.gateway.to_string(),
            )),
            Family::V6 => n
                .subnet6
                .zip(n.gateway6)
                .map(|(s, g)| (prefix(s.addr.to_string(), s.prefix_len), g.to_string())),
        };
        if n.internal {
            // Only the gateway's own address is reachable on the host (and,
            // for IPv6, neighbour discovery, without which nothing is).
            let mut m = vec![eq(meta("iifname"), br.clone())];
            if f == Family::V6 {
                m.push(ne(meta("l4proto"), json!("ipv6-icmp")));
            }
            if let Some((_, gw)) = &own {
                m.push(ne(payload(ip, "daddr"), json!(gw)));
            }
            m.push(json!({"drop": null}));
            cmds.push(rule(f, "input", m));
            cmds.push(rule(
                f,
                "forward",
                vec![
                    eq(meta("iifname"), br.clone()),
                    ne(meta("oifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
            cmds.push(rule(
                f,
                "forward",
                vec![
                    eq(meta("oifname"), br.clone()),
                    ne(meta("iifname"), br.clone()),
                    json!({"drop": null}),
                ],
            ));
        } else if let Some((net, _)) = &own {
            cmds.push(rule(
                f,
                "postrouting",
                vec![
                    eq(payload(ip, "saddr"), net.clone()),
                    ne(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        if f == Family::V4 {
            cmds.push(rule(
                f,
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix("127.0.0.0".into(), 8)),
                    eq(meta("oifname"), br.clone()),
                    json!({"masquerade": null}),
                ],
            ));
        }
        for other in networks.iter().filter(|o| o.bridge != n.bridge) {
            cmds.push(rule(
                f,
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
        let to = match f {
            Family::V4 => a.ip.to_string(),
            Family::V6 => match a.ip6 {
                Some(ip6) => ip6.to_string(),
                None => continue,
            },
        };
        for p in &a.ports {
            let mut m = Vec::new();
            match p.host_ip {
                // A port published on one IPv4 address has no IPv6 side.
                Some(_) if f == Family::V6 => continue,
                Some(hip) => m.push(eq(payload("ip", "daddr"), json!(hip.to_string()))),
                None => m.push(eq(
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                )),
            }
            if f == Family::V6 {
                // The answer to ::1 would be dropped on the bridge: the
                // port proxy takes ::1 (proxy.rs).
                m.push(ne(payload("ip6", "daddr"), json!("::1")));
            }
            m.push(eq(payload(p.proto.name(), "dport"), json!(p.host_port)));
            m.push(json!({"dnat": {"addr": to, "port": p.container_port}}));
            cmds.push(rule(f, "prerouting", m.clone()));
            cmds.push(rule(f, "output", m));
        }
    }
    cmds
}

/// Replaces hull's table with `ruleset` (one nft transaction), or removes
/// it when there is nothing to put in it. The JSON goes through `file` (the
/// last ruleset stays there to look at; not every host has /dev/stdin).
pub fn apply(ruleset: &Value, empty: bool, file: &Path) -> Result<(), FirewallError> {
    let input = if empty {
        let mut cmds = drop_table(Family::V4);
        cmds.extend(drop_table(Family::V6));
        json!({"nftables": cmds})
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{PortMapping, Proto};

    fn network(name: &str, v6: bool) -> Network {
        Network {
            name: name.into(),
            id: "0".repeat(64),
            subnet: "10.7.0.0/24".parse().unwrap(),
            gateway: "10.7.0.1".parse().unwrap(),
            internal: false,
            subnet6: v6.then(|| "fd00:7::/64".parse().unwrap()),
            gateway6: v6.then(|| "fd00:7::1".parse().unwrap()),
            bridge: format!("hull-{name}"),
            created: 0,
        }
    }

    #[test]
    fn a_dual_stack_network_gets_ip6_rules_to_the_containers_ipv6_address() {
        let att = Attachment {
            container: "c".into(),
            name: "web".into(),
            network: "d".into(),
            ip: "10.7.0.2".parse().unwrap(),
            ip6: Some("fd00:7::2".parse().unwrap()),
            mac: "02:42:0a:07:00:02".into(),
            host_veth: "hvc".into(),
            ports: vec![PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: Proto::Tcp,
            }],
            aliases: Vec::new(),
        };
        let text = ruleset(&[network("d", true)], std::slice::from_ref(&att)).to_string();
        assert!(text.contains(r#""family":"ip6""#), "{text}");
        assert!(text.contains(r#""addr":"fd00:7::2","port":80"#), "{text}");
        assert!(text.contains(r#""addr":"fd00:7::","len":64"#), "{text}");
        // ::1 goes to the port proxy, not through DNAT.
        assert!(text.contains(r#""op":"!=","right":"::1""#), "{text}");
        // IPv4 only: the ip6 table is only deleted, never filled.
        let v4 = ruleset(&[network("d", false)], &[att]);
        let rules6 = v4["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["add"]["rule"]["family"] == "ip6")
            .count();
        assert_eq!(rules6, 0, "{v4}");
    }
}
