//! Attaching a container to a network and detaching it: its namespace,
//! lease, veth (and tap for a microVM), published ports and the files the
//! agent writes; [`attach_netns`] is the attach step alone.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::Path;

use hull_agent::protocol::{Interface, Interface6, NetworkSetup, Route};

use super::link::{self, LinkError, Netlink};
use super::{
    ATTACHMENT_FILE, Attachment, GUEST_IFNAME, MTU, Mode, NETNS_FILE, Network, NetworkError,
    Networks, PortMapping, Prepared, Proto, Request, TAP_IFNAME, io_err, ip6_taken, mac_for,
    parse_mac,
};
use crate::sandbox::Isolation;

/// The bridge of network `n` up with its gateway address(es), forwarding
/// on (IPv6 forwarding too on a dual-stack network, as docker sets it).
pub(super) fn ensure_bridge(nl: &Netlink, n: &Network) -> Result<(), NetworkError> {
    let v6 = n.subnet6.zip(n.gateway6).map(|(s, g)| (g, s.prefix_len));
    nl.ensure_bridge(&n.bridge, n.gateway, n.subnet.prefix_len, v6)?;
    let forward6 = v6.map(|_| {
        (
            "/proc/sys/net/ipv6/conf/all/forwarding".to_string(),
            "enabling IPv6 forwarding in",
        )
    });
    for (path, what) in [
        (
            "/proc/sys/net/ipv4/ip_forward".to_string(),
            "enabling IP forwarding in",
        ),
        (
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.bridge),
            "enabling route_localnet in",
        ),
    ]
    .into_iter()
    .chain(forward6)
    {
        std::fs::write(&path, "1").map_err(io_err(what, Path::new(&path)))?;
    }
    Ok(())
}

/// Which backend an attachment serves: the ns backend's processes use the
/// veth peer directly; a microVM gets a tap redirected to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ns,
    Vm,
}

/// The attach step alone, on an existing network namespace `netns` (made
/// by hull, or by podman/dockerd for the OCI runtime): a veth from
/// `network`'s bridge into it, named eth0 there with `mac`, `ip` and the
/// bridge's MTU. For `Backend::Ns` eth0 gets the address and the default
/// route; for `Backend::Vm` eth0 stays without an address (IPv6 off on
/// it) and a tap is made beside it, tied to it by tc redirects both ways;
/// its fd is returned for the VMM (the guest takes `ip` and `mac`). On a
/// dual-stack network eth0 (ns) also gets the IPv6 address that goes with
/// `ip` ([`Network::ip6_for`]) and the IPv6 default route.
pub fn attach_netns(
    netns: &Path,
    network: &Network,
    host_veth: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
    backend: Backend,
) -> Result<Option<OwnedFd>, LinkError> {
    let link = VethLink {
        host_veth,
        ifname: GUEST_IFNAME,
        ip,
        ip6: network.ip6_for(ip),
        mac,
        default_route: true,
    };
    attach_veth(netns, network, &link, backend)
}

/// One veth into a container's namespace: its names, address and MAC.
pub(super) struct VethLink<'a> {
    pub host_veth: &'a str,
    /// Its name in the container's namespace.
    pub ifname: &'a str,
    pub ip: Ipv4Addr,
    /// Its IPv6 address on a dual-stack network.
    pub ip6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    /// Whether the container's default routes go through it (its first
    /// network; not one joined later with `hull network connect`).
    pub default_route: bool,
}

/// [`attach_netns`] for any interface name in the namespace.
pub(super) fn attach_veth(
    netns: &Path,
    network: &Network,
    link: &VethLink<'_>,
    backend: Backend,
) -> Result<Option<OwnedFd>, LinkError> {
    let (host_veth, ifname, ip, mac) = (link.host_veth, link.ifname, link.ip, link.mac);
    let nl = Netlink::open()?;
    let ns = File::open(netns).map_err(|source| LinkError::Io {
        what: format!("opening {}", netns.display()),
        source,
    })?;
    let peer = format!("{host_veth}p");
    nl.veth_into(host_veth, &peer, &network.bridge, MTU, &ns)?;
    let prefix_len = network.subnet.prefix_len;
    // An --internal network has no way out: no default route (as docker).
    let routed = link.default_route && !network.internal;
    let gateway = routed.then_some(network.gateway);
    let v6 = match (network.subnet6, network.gateway6) {
        (Some(s), Some(g)) => {
            let ip6 = link
                .ip6
                .ok_or_else(|| LinkError::NoAddress6(ip, s.to_string()))?;
            Some((ip6, s.prefix_len, routed.then_some(g)))
        }
        _ => None,
    };
    link::in_netns(netns, move || {
        // As docker does: the container's root (in a user namespace of its
        // own, without privilege over this namespace) may bind low ports
        // and ping.
        for (key, value) in [
            ("ipv4/ip_unprivileged_port_start", "0"),
            ("ipv4/ping_group_range", "0 2147483647"),
        ] {
            std::fs::write(format!("/proc/sys/net/{key}"), value).map_err(|source| {
                LinkError::Io {
                    what: format!(
                        "setting net.{} in the container's namespace",
                        key.replace('/', ".")
                    ),
                    source,
                }
            })?;
        }
        let nl = Netlink::open()?;
        let eth = nl.rename(&peer, ifname, mac)?;
        nl.set_up(eth, ifname)?;
        if let Some(lo) = nl.index("lo")? {
            nl.set_up(lo, "lo")?;
        }
        match backend {
            Backend::Ns => {
                nl.address_and_route(eth, ip, prefix_len, gateway)?;
                if let Some((ip6, len6, gw6)) = v6 {
                    nl.address_and_route(eth, ip6, len6, gw6)?;
                }
                Ok(None)
            }
            Backend::Vm => {
                let tap = link::create_tap(TAP_IFNAME)?;
                let t = nl
                    .index(TAP_IFNAME)?
                    .ok_or_else(|| LinkError::NoLink(TAP_IFNAME.into()))?;
                // The guest owns the link's IPv6 addresses: this side sends
                // no neighbour or router solicitation of its own.
                for name in [GUEST_IFNAME, TAP_IFNAME] {
                    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
                    if std::path::Path::new(&path).exists() {
                        std::fs::write(&path, "1").map_err(|source| LinkError::Io {
                            what: format!(
                                "turning IPv6 off on {name} in the container's namespace"
                            ),
                            source,
                        })?;
                    }
                }
                nl.set_up(t, TAP_IFNAME)?;
                nl.redirect_both_ways((eth, ifname), (t, TAP_IFNAME))?;
                Ok(Some(tap))
            }
        }
    })
}

/// The OCI runtime's attach step for a microVM, in the calling thread's
/// network namespace (an engine's, which the runtime's monitor joined):
/// the engine's link (a veth with an address) is tied by tc redirects both
/// ways to a new tap, whose fd is returned with the veth's MAC and the
/// guest's interface (the veth's addresses, prefixes, MTU, gateways and
/// the namespace's other routes through it). None when the engine made no
/// such link.
pub fn adopt_engine_link() -> Result<Option<(OwnedFd, String, Interface)>, LinkError> {
    let nl = Netlink::open()?;
    let Some(link) = nl.engine_link()? else {
        return Ok(None);
    };
    let tap = link::create_tap(TAP_IFNAME)?;
    let t = nl
        .index(TAP_IFNAME)?
        .ok_or_else(|| LinkError::NoLink(TAP_IFNAME.into()))?;
    nl.set_up(t, TAP_IFNAME)?;
    nl.redirect_both_ways((link.index, &link.name), (t, TAP_IFNAME))?;
    let mac = link
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let interface = Interface {
        name: GUEST_IFNAME.into(),
        address: link.address,
        prefix_len: link.prefix_len,
        mtu: link.mtu,
        gateway: link.gateway,
        ipv6: link.ipv6.map(|v6| Interface6 {
            address: v6.address,
            prefix_len: v6.prefix_len,
            gateway: v6.gateway,
        }),
        mac: Some(mac.clone()),
        routes: link
            .routes
            .into_iter()
            .map(|r| Route {
                destination: r.destination,
                prefix_len: r.prefix_len,
                gateway: r.gateway,
            })
            .collect(),
    };
    Ok(Some((tap, mac, interface)))
}

pub(super) fn hosts_file(
    req: &Request,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
    peers: &[Attachment],
) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{}\n", req.hostname));
    }
    if let Some(ip6) = ip6 {
        s.push_str(&format!("{ip6}\t{}\n", req.hostname));
    }
    for p in peers {
        let mut names = vec![p.name.clone()];
        names.extend(p.aliases.iter().cloned());
        s.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
        if let Some(ip6) = p.ip6 {
            s.push_str(&format!("{ip6}\t{}\n", names.join(" ")));
        }
    }
    for (name, ip) in &req.extra_hosts {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

fn resolv_conf(req: &Request) -> Option<String> {
    if req.dns.is_empty() {
        // The host's resolvers, as docker copies them (minus loopback ones,
        // which a container cannot reach).
        let host = std::fs::read_to_string("/etc/resolv.conf").ok()?;
        let kept: String = host
            .lines()
            .filter(|l| !l.trim_start().starts_with("nameserver 127."))
            .map(|l| format!("{l}\n"))
            .collect();
        return Some(kept);
    }
    Some(
        req.dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect(),
    )
}

/// Prepares the network of the container whose state dir is `dir` (id
/// `id`) in state dir `state_dir`: its namespace, address, veth (and tap
/// for a microVM), published ports; records it in network.json. On an
/// error nothing of it remains.
pub fn prepare(
    state_dir: &Path,
    dir: &Path,
    id: &str,
    req: &Request,
    isolation: Isolation,
) -> Result<Prepared, NetworkError> {
    let name = match &req.mode {
        Mode::Host if isolation == Isolation::Vm => return Err(NetworkError::HostForVm),
        Mode::Host => {
            return Ok(Prepared {
                netns: None,
                tap: None,
                setup: NetworkSetup::default(),
            });
        }
        Mode::None => None,
        Mode::Network(n) => Some(n.clone()),
    };
    let nets = Networks::open(state_dir)?;
    nets.reclaim();
    let netns = dir.join(NETNS_FILE);
    let Some(name) = name else {
        // A microVM without a network has no NIC, and its VMM runs in a
        // network namespace of its jail's: a namespace here would only be
        // made and torn down (tens of ms each under emulation).
        let netns = (isolation == Isolation::Ns)
            .then(|| link::create_netns(&netns).map(|()| netns))
            .transpose()?;
        return Ok(Prepared {
            netns,
            tap: None,
            setup: NetworkSetup {
                interface: None,
                hosts: Some(hosts_file(req, None, None, &[])),
                resolv_conf: None,
            },
        });
    };
    let network = nets.get(&name)?;
    let attached = nets.attachments();
    let leases = nets.leases(&name);
    let ip = match req.ip {
        Some(ip) if !network.subnet.usable(ip) || ip == network.gateway => {
            return Err(NetworkError::OutsideSubnet {
                ip,
                network: name,
                subnet: network.subnet,
            });
        }
        Some(ip) if leases.holder(ip).is_some() => return Err(NetworkError::AddressInUse(ip)),
        Some(ip) => ip,
        // With --ip6 the lease's own IPv6 address is not used: any free one.
        None if req.ip6.is_some() => leases
            .next_free(&network.subnet, network.gateway, |_| true)
            .ok_or_else(|| NetworkError::Full(name.clone()))?,
        None => leases
            .next_free(&network.subnet, network.gateway, |ip| {
                network.lease_fits(ip, &attached)
            })
            .ok_or_else(|| NetworkError::Full(name.clone()))?,
    };
    let ip6 = ip6_for_request(req.ip6, &network, ip, &attached)?;
    let mut ports = req.ports.clone();
    for p in &mut ports {
        let clash = attached.iter().find(|a| {
            a.ports.iter().any(|q| {
                q.proto == p.proto
                    && q.host_port == p.host_port
                    && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
            })
        });
        if let Some(a) = clash.filter(|_| p.host_port != 0) {
            return Err(NetworkError::PortInUse(
                p.host_port,
                p.proto.name(),
                a.name.clone(),
            ));
        }
        if p.host_port == 0 {
            p.host_port = free_port(p.proto, &attached, &ports_snapshot(&req.ports))
                .ok_or_else(|| NetworkError::Invalid("no free host port left".into()))?;
        }
    }
    let mac_text = req.mac.clone().unwrap_or_else(|| mac_for(ip));
    let mac = parse_mac(&mac_text)
        .ok_or_else(|| NetworkError::Invalid(format!("invalid MAC address {mac_text:?}")))?;
    let att = Attachment {
        container: id.to_string(),
        name: req.name.clone(),
        network: name.clone(),
        ip,
        ip6,
        mac: mac_text.clone(),
        host_veth: format!("hv{}", &id[..id.len().min(10)]),
        ports,
        aliases: req.aliases.clone(),
    };
    leases
        .take(ip, id)
        .map_err(io_err("writing a lease in", &nets.dir))?;
    let undo = |nets: &Networks| {
        leases.free(ip, id);
        if let Ok(nl) = Netlink::open() {
            let _ = nl.delete(&att.host_veth);
        }
        link::remove_netns(&netns);
        let _ = std::fs::remove_file(dir.join(ATTACHMENT_FILE));
        let _ = nets.sync();
    };
    let backend = match isolation {
        Isolation::Ns => Backend::Ns,
        Isolation::Vm => Backend::Vm,
    };
    let made = (|| -> Result<Option<OwnedFd>, NetworkError> {
        ensure_bridge(&Netlink::open()?, &network)?;
        link::create_netns(&netns)?;
        let link = VethLink {
            host_veth: &att.host_veth,
            ifname: GUEST_IFNAME,
            ip,
            ip6,
            mac,
            default_route: true,
        };
        let tap = attach_veth(&netns, &network, &link, backend)?;
        let path = dir.join(ATTACHMENT_FILE);
        let json = serde_json::to_vec_pretty(&att).expect("an Attachment serializes");
        std::fs::write(&path, json).map_err(io_err("writing", &path))?;
        nets.sync()?;
        Ok(tap)
    })();
    let tap = match made {
        Ok(t) => t,
        Err(e) => {
            undo(&nets);
            return Err(e);
        }
    };
    let peers: Vec<Attachment> = if network.resolves_names() {
        attached.into_iter().filter(|a| a.network == name).collect()
    } else {
        Vec::new()
    };
    let interface = (backend == Backend::Vm).then(|| Interface {
        name: GUEST_IFNAME.into(),
        address: ip,
        prefix_len: network.subnet.prefix_len,
        mtu: MTU,
        gateway: (!network.internal).then_some(network.gateway),
        ipv6: ip6.zip(network.subnet6).map(|(address, s)| Interface6 {
            address,
            prefix_len: s.prefix_len,
            gateway: network.gateway6.filter(|_| !network.internal),
        }),
        mac: Some(mac_text.clone()),
        routes: Vec::new(),
    });
    Ok(Prepared {
        netns: Some(netns),
        tap: tap.map(|t| (t, mac_text)),
        setup: NetworkSetup {
            interface,
            hosts: Some(hosts_file(req, Some(ip), ip6, &peers)),
            resolv_conf: if network.resolves_names() && req.dns.is_empty() {
                Some(format!("nameserver {}\n", network.gateway))
            } else if network.internal {
                None
            } else {
                resolv_conf(req)
            },
        },
    })
}

/// The container's IPv6 address on `network`: `asked` (`--ip6` of `run`
/// and `network connect`: inside the IPv6 subnet, not the gateway, not
/// held by another container), or the one that goes with its IPv4 lease
/// `ip`; None on an IPv4-only network.
pub(super) fn ip6_for_request(
    asked: Option<Ipv6Addr>,
    network: &Network,
    ip: Ipv4Addr,
    attached: &[Attachment],
) -> Result<Option<Ipv6Addr>, NetworkError> {
    let (Some(subnet6), Some(gateway6)) = (network.subnet6, network.gateway6) else {
        return match asked {
            Some(_) => Err(NetworkError::NoIpv6(network.name.clone())),
            None => Ok(None),
        };
    };
    let ip6 = match asked {
        Some(ip6) if !subnet6.usable(ip6) || ip6 == gateway6 => {
            return Err(NetworkError::OutsideSubnet6 {
                ip: ip6,
                network: network.name.clone(),
                subnet: subnet6,
            });
        }
        Some(ip6) => ip6,
        None => network
            .ip6_for(ip)
            .ok_or_else(|| NetworkError::Full(network.name.clone()))?,
    };
    if ip6_taken(attached, &network.name, ip6) {
        return Err(NetworkError::AddressInUse6(ip6));
    }
    Ok(Some(ip6))
}

fn ports_snapshot(p: &[PortMapping]) -> Vec<u16> {
    p.iter().map(|m| m.host_port).filter(|&x| x != 0).collect()
}

/// A host port for `proto` that neither a container nor this request
/// publishes and that nothing listens on (on IPv4, nor on IPv6 where the
/// port proxy listens), from docker's ephemeral range.
fn free_port(proto: Proto, attached: &[Attachment], own: &[u16]) -> Option<u16> {
    (32768..60999u16).find(|&port| {
        !own.contains(&port)
            && !attached.iter().any(|a| {
                a.ports
                    .iter()
                    .any(|q| q.proto == proto && q.host_port == port)
            })
            && match proto {
                Proto::Tcp => std::net::TcpListener::bind(("0.0.0.0", port)).is_ok(),
                Proto::Udp => std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok(),
            }
            && super::proxy::free6(proto, port)
    })
}

/// The attachment of the container in `dir`, if it has one.
pub fn attachment(dir: &Path) -> Option<Attachment> {
    serde_json::from_slice(&std::fs::read(dir.join(ATTACHMENT_FILE)).ok()?).ok()
}

/// Undoes `prepare` for the container in `dir` (state dir `state_dir`):
/// its lease, veth, namespace and port rules. Safe to call again, and
/// after a crash at any point.
pub fn release(state_dir: &Path, dir: &Path) {
    let all = super::connect::all_attachments(dir);
    let netns = dir.join(NETNS_FILE);
    if all.is_empty() && !netns.exists() {
        return;
    }
    let Ok(nets) = Networks::open(state_dir) else {
        return;
    };
    for (file, a) in &all {
        super::connect::undo(&nets, file, a);
    }
    link::remove_netns(&netns);
    if !all.is_empty() {
        if let Err(e) = nets.sync() {
            log::warn!("{}", crate::error::chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dual() -> Network {
        Network {
            name: "dual".into(),
            id: "0".repeat(64),
            subnet: "10.7.0.0/24".parse().unwrap(),
            gateway: "10.7.0.1".parse().unwrap(),
            internal: false,
            subnet6: Some("fd00:7::/64".parse().unwrap()),
            gateway6: Some("fd00:7::1".parse().unwrap()),
            bridge: "hull-dual".into(),
            created: 0,
        }
    }

    fn holding(ip6: &str) -> Attachment {
        Attachment {
            container: "c".into(),
            name: "db".into(),
            network: "dual".into(),
            ip: "10.7.0.9".parse().unwrap(),
            ip6: Some(ip6.parse().unwrap()),
            mac: mac_for("10.7.0.9".parse().unwrap()),
            host_veth: "hvc".into(),
            ports: Vec::new(),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn ip6_is_asked_for_or_follows_the_lease_as_docker_checks_it() {
        let n = dual();
        let ip: Ipv4Addr = "10.7.0.5".parse().unwrap();
        let ask = |a: Option<&str>| Request {
            ip6: a.map(|a| a.parse().unwrap()),
            ..Default::default()
        };
        let taken = [holding("fd00:7::99")];
        let got = |a| ip6_for_request(ask(a).ip6, &n, ip, &taken);
        assert_eq!(got(None).unwrap(), Some("fd00:7::5".parse().unwrap()));
        assert_eq!(
            got(Some("fd00:7::42")).unwrap(),
            Some("fd00:7::42".parse().unwrap())
        );
        for outside in ["fd00:8::5", "fd00:7::1", "fd00:7::"] {
            assert!(
                matches!(got(Some(outside)), Err(NetworkError::OutsideSubnet6 { .. })),
                "{outside}"
            );
        }
        assert!(matches!(
            got(Some("fd00:7::99")),
            Err(NetworkError::AddressInUse6(_))
        ));
        // The lease whose own IPv6 address is held is passed over.
        assert!(!n.lease_fits("10.7.0.153".parse().unwrap(), &taken));
        assert!(n.lease_fits(ip, &taken));
        let v4_only = Network {
            subnet6: None,
            gateway6: None,
            ..dual()
        };
        let e = ip6_for_request(ask(Some("fd00:7::5")).ip6, &v4_only, ip, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network dual has no IPv6 subnet: --ip6 needs a network made with --ipv6"
        );
        assert_eq!(
            ip6_for_request(ask(None).ip6, &v4_only, ip, &[]).unwrap(),
            None
        );
    }
}
