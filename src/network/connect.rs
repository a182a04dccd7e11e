//! `hull network connect|disconnect`: a running container joins another
//! network (one more veth, `ethN` in its namespace, with an address from
//! that network and no default route) or leaves one. Each network joined
//! so is recorded as `network-NAME.json` in the container's state dir,
//! beside `network.json` (its first network), so that the networks'
//! resolvers, rules, leases and `release` see it like any attachment.
//!
//! A microVM would need a second virtio-net device hot-plugged into a
//! running guest, which hull-vmm cannot do: refused in one line.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use super::attach::{Backend, VethLink, attach_veth, ip6_for_request};
use super::link::{self, Netlink};
use super::{
    ATTACHMENT_FILE, Attachment, NETNS_FILE, NetworkError, Networks, io_err, mac_for, parse_mac,
};
use crate::sandbox::Isolation;

/// The file recording container-side attachment to `network` made by
/// `connect`.
fn extra_file(dir: &Path, network: &str) -> PathBuf {
    dir.join(format!("network-{network}.json"))
}

/// Every attachment of the container in `dir`: its first network's and
/// those `connect` added, with the file recording each.
pub(super) fn all_attachments(dir: &Path) -> Vec<(PathBuf, Attachment)> {
    let mut files = vec![dir.join(ATTACHMENT_FILE)];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut extra: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("network-") && n.ends_with(".json"))
            })
            .collect();
        extra.sort();
        files.extend(extra);
    }
    files
        .into_iter()
        .filter_map(|f| {
            let a = serde_json::from_slice(&std::fs::read(&f).ok()?).ok()?;
            Some((f, a))
        })
        .collect()
}

/// What `hull network connect` asks for.
#[derive(Debug, Clone, Default)]
pub struct Join {
    pub network: String,
    /// `--alias`.
    pub aliases: Vec<String>,
    /// `--ip6`: the IPv6 address on a dual-stack network, checked as
    /// `hull run --ip6` is.
    pub ip6: Option<Ipv6Addr>,
}

/// Joins the running container `name` (id `id`, state dir `dir`,
/// `isolation`) to the network `join` names.
pub fn connect(
    state_dir: &Path,
    dir: &Path,
    id: &str,
    name: &str,
    isolation: Isolation,
    join: &Join,
) -> Result<Attachment, NetworkError> {
    let (network, aliases) = (join.network.as_str(), &join.aliases);
    if isolation == Isolation::Vm {
        return Err(NetworkError::ConnectVm);
    }
    let netns = dir.join(NETNS_FILE);
    if !netns.exists() {
        return Err(NetworkError::NoNamespace(name.to_string()));
    }
    let nets = Networks::open(state_dir)?;
    let n = nets.get(network)?;
    if all_attachments(dir)
        .iter()
        .any(|(_, a)| a.network == network)
    {
        return Err(NetworkError::AlreadyOn(
            name.to_string(),
            network.to_string(),
        ));
    }
    let leases = nets.leases(network);
    let attached = nets.attachments();
    // With --ip6 the lease's own IPv6 address is not used: any free one.
    let ip = leases
        .next_free(&n.subnet, n.gateway, |ip| {
            join.ip6.is_some() || n.lease_fits(ip, &attached)
        })
        .ok_or_else(|| NetworkError::Full(network.to_string()))?;
    let ip6 = ip6_for_request(join.ip6, &n, ip, &attached)?;
    let nl = Netlink::open()?;
    // hv + 9 characters of the id + one hex digit: beside the first
    // network's hv + 10.
    let mut host_veth = None;
    for i in 1..16u32 {
        let v = format!("hv{}{i:x}", &id[..id.len().min(9)]);
        if nl.index(&v)?.is_none() {
            host_veth = Some(v);
            break;
        }
    }
    let host_veth = host_veth.ok_or_else(|| {
        NetworkError::Invalid(format!("container {name} is on too many networks"))
    })?;
    // The first ethN the namespace does not have.
    let ifname = link::in_netns(&netns, || {
        let nl = Netlink::open()?;
        for i in 0..16 {
            let n = format!("eth{i}");
            if nl.index(&n)?.is_none() {
                return Ok(Some(n));
            }
        }
        Ok(None)
    })?
    .ok_or_else(|| NetworkError::Invalid(format!("container {name} is on too many networks")))?;
    let mac_text = mac_for(ip);
    let mac = parse_mac(&mac_text).expect("mac_for makes a unicast MAC");
    let att = Attachment {
        container: id.to_string(),
        name: name.to_string(),
        network: network.to_string(),
        ip,
        ip6,
        mac: mac_text,
        host_veth: host_veth.clone(),
        ports: Vec::new(),
        aliases: aliases.clone(),
    };
    leases
        .take(ip, id)
        .map_err(io_err("writing a lease in", &nets.dir))?;
    let file = extra_file(dir, network);
    let made = (|| -> Result<(), NetworkError> {
        super::attach::ensure_bridge(&nl, &n)?;
        let link = VethLink {
            host_veth: &host_veth,
            ifname: &ifname,
            ip,
            ip6,
            mac,
            default_route: false,
        };
        attach_veth(&netns, &n, &link, Backend::Ns)?;
        let json = serde_json::to_vec_pretty(&att).expect("an Attachment serializes");
        std::fs::write(&file, json).map_err(io_err("writing", &file))?;
        nets.sync()
    })();
    if let Err(e) = made {
        leases.free(ip, id);
        let _ = nl.delete(&host_veth);
        let _ = std::fs::remove_file(&file);
        let _ = nets.sync();
        return Err(e);
    }
    Ok(att)
}

/// Takes the container `name` in `dir` off `network` (its first network
/// too, as docker allows): its veth, lease, names and rules there go; its
/// namespace stays.
pub fn disconnect(
    state_dir: &Path,
    dir: &Path,
    name: &str,
    network: &str,
) -> Result<(), NetworkError> {
    let nets = Networks::open(state_dir)?;
    nets.get(network)?;
    let Some((file, a)) = all_attachments(dir)
        .into_iter()
        .find(|(_, a)| a.network == network)
    else {
        return Err(NetworkError::NotOn(name.to_string(), network.to_string()));
    };
    undo(&nets, &file, &a);
    nets.sync()
}

/// Frees what attachment `a` (recorded in `file`) holds.
pub(super) fn undo(nets: &Networks, file: &Path, a: &Attachment) {
    nets.leases(&a.network).free(a.ip, &a.container);
    if let Ok(nl) = Netlink::open() {
        let _ = nl.delete(&a.host_veth);
    }
    let _ = std::fs::remove_file(file);
}
