//! Container networks, one model for both backends (netavark's and Kata's):
//! every container gets a network namespace of its own, held by a bind
//! mount in its state dir, with a veth to its network's bridge. The ns
//! backend's processes live in that namespace; a microVM joins it through
//! a tap inside it, tied to the veth by tc redirects both ways, the guest
//! taking the veth's MAC, address and MTU. [`attach_netns`] is that step
//! alone, for a namespace someone else made (podman, dockerd).
//!
//! Host side, docker's model: a network is a Linux bridge with the
//! gateway's address; IP forwarding, masquerade (none for `--internal`),
//! published ports and isolation between networks live in hull's own
//! nftables table ([`firewall`]); addresses come from leases under the
//! networks lock ([`ipam`]). The default network `bridge` exists without
//! setup.

mod attach;
mod connect;
pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod ports;
pub mod proxy;

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use hull_agent::protocol::NetworkSetup;
use serde::{Deserialize, Serialize};

pub use attach::{Backend, adopt_engine_link, attach_netns, attachment, prepare, release};
pub use connect::{Join, connect, disconnect};
pub use ipam::{Subnet, Subnet6};
use link::{LinkError, Netlink};
pub use ports::{PortMapping, Proto};
pub use proxy::Proxy;

use crate::error::PathIoError;
use crate::sys;

/// The network every container joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "bridge";
/// The default network's bridge.
const DEFAULT_BRIDGE: &str = "hull0";
/// The MTU of bridges, veths and guests.
pub const MTU: u32 = 1500;
/// A container's attachment, as JSON in its state dir.
pub const ATTACHMENT_FILE: &str = "network.json";
/// The container's network namespace (an nsfs bind mount) in its state dir.
pub const NETNS_FILE: &str = "netns";
/// The name of the container's interface.
const GUEST_IFNAME: &str = "eth0";
/// The tap a microVM's virtio-net device uses, in the container's namespace.
const TAP_IFNAME: &str = "tap0";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network with name {0} already exists")]
    Exists(String),
    #[error("invalid network name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64 characters")]
    InvalidName(String),
    #[error("{0}")]
    Invalid(String),
    #[error("subnet {0} overlaps with network {1} ({2})")]
    Overlap(Subnet, String, Subnet),
    #[error("IPv6 subnet {0} overlaps with network {1} ({2})")]
    Overlap6(Subnet6, String, Subnet6),
    #[error("an IPv6 --subnet or --gateway needs --ipv6")]
    Ipv6Off,
    #[error("no free unique local IPv6 subnet found: pass an IPv6 --subnet")]
    NoSubnet6,
    #[error("no free subnet left in the default pools: pass --subnet")]
    NoSubnet,
    #[error("no free address left in network {0}")]
    Full(String),
    #[error("address {ip} is outside network {network}'s subnet {subnet}")]
    OutsideSubnet {
        ip: Ipv4Addr,
        network: String,
        subnet: Subnet,
    },
    #[error("address {0} is already in use")]
    AddressInUse(Ipv4Addr),
    #[error("IPv6 address {0} is already in use")]
    AddressInUse6(Ipv6Addr),
    #[error("network {0} has no IPv6 subnet: --ip6 needs a network made with --ipv6")]
    NoIpv6(String),
    #[error("IPv6 address {ip} is outside network {network}'s subnet {subnet}")]
    OutsideSubnet6 {
        ip: Ipv6Addr,
        network: String,
        subnet: Subnet6,
    },
    #[error("port {0}/{1} is already published by container {2}")]
    PortInUse(u16, &'static str, String),
    #[error(
        "a running microVM cannot join another network: hull-vmm cannot hot-plug a second network device (start the container with --network NAME instead)"
    )]
    ConnectVm,
    #[error("container {0} has no network namespace of its own (--network host, or not running)")]
    NoNamespace(String),
    #[error("container {0} is already on network {1}")]
    AlreadyOn(String, String),
    #[error("container {0} is not on network {1}")]
    NotOn(String, String),
    #[error("network {0} has active endpoints: {1}")]
    InUse(String, String),
    #[error("the default network {0} cannot be removed")]
    Default(String),
    #[error(
        "--network host shares the host's network namespace: a microVM has none to share (use --network bridge, or --isolation ns)"
    )]
    HostForVm,
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    crate::error::io_at(what, path)
}

/// One network, as `hull network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    /// A dual-stack network's IPv6 subnet (`--ipv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Subnet6>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    /// The Linux bridge on the host.
    pub bridge: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl Network {
    /// Whether containers on it resolve each other by name (docker: not on
    /// the default network).
    pub fn resolves_names(&self) -> bool {
        self.name != DEFAULT_NETWORK
    }

    /// The IPv6 address that goes with IPv4 lease `ip` on a dual-stack
    /// network (None on an IPv4-only one, or when the IPv6 subnet is too
    /// small for the lease's host number).
    pub fn ip6_for(&self, ip: Ipv4Addr) -> Option<Ipv6Addr> {
        self.subnet6?.for_lease(&self.subnet, ip, self.gateway6?)
    }

    /// Whether IPv4 lease `ip` can be handed out beside `attached`: on a
    /// dual-stack network its IPv6 address must exist and be free (a
    /// container may hold it through `--ip6`).
    pub fn lease_fits(&self, ip: Ipv4Addr, attached: &[Attachment]) -> bool {
        if self.subnet6.is_none() {
            return true;
        }
        self.ip6_for(ip)
            .is_some_and(|ip6| !ip6_taken(attached, &self.name, ip6))
    }
}

/// Whether a container on `network` holds `ip6`.
fn ip6_taken(attached: &[Attachment], network: &str, ip6: Ipv6Addr) -> bool {
    attached
        .iter()
        .any(|a| a.network == network && a.ip6 == Some(ip6))
}

/// What `hull network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Option<Subnet>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    /// Dual stack: an IPv6 subnet too (`subnet6`, or a unique local /64).
    pub ipv6: bool,
    pub subnet6: Option<Subnet6>,
    pub gateway6: Option<Ipv6Addr>,
}

/// How a container is networked (`--network`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only `lo`.
    None,
    /// The host's network namespace (ns only).
    Host,
    /// A network by name.
    Network(String),
}

impl Mode {
    pub fn parse(s: &str) -> Mode {
        match s {
            "none" => Mode::None,
            "host" => Mode::Host,
            name => Mode::Network(name.to_string()),
        }
    }
}

/// A container's network wishes, from `hull run`'s flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub mode: Mode,
    pub ip: Option<Ipv4Addr>,
    /// `--ip6`: the IPv6 address on a dual-stack network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: Option<String>,
    pub aliases: Vec<String>,
    pub dns: Vec<Ipv4Addr>,
    /// `--add-host NAME:IP`.
    pub extra_hosts: Vec<(String, Ipv4Addr)>,
    pub ports: Vec<PortMapping>,
    /// The container's hostname (its short id unless `--hostname`).
    pub hostname: String,
    /// The container's name, for peers' lookups.
    pub name: String,
}

impl Default for Request {
    fn default() -> Request {
        Request {
            mode: Mode::Network(DEFAULT_NETWORK.into()),
            ip: None,
            ip6: None,
            mac: None,
            aliases: Vec::new(),
            dns: Vec::new(),
            extra_hosts: Vec::new(),
            ports: Vec::new(),
            hostname: String::new(),
            name: String::new(),
        }
    }
}

/// A container on a network, as network.json in its state dir records it
/// (what `hull port` shows and what release undoes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub container: String,
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// On a dual-stack network, the IPv6 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub mac: String,
    pub host_veth: String,
    pub ports: Vec<PortMapping>,
    pub aliases: Vec<String>,
}

/// What the sandbox needs from a prepared network.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The network namespace to run in (None: the host's, `--network host`).
    pub netns: Option<PathBuf>,
    /// The tap for the microVM's virtio-net device, and the guest's MAC.
    pub tap: Option<(OwnedFd, String)>,
    /// What the agent sets up in the container.
    pub setup: NetworkSetup,
}

/// hull's networks: definitions and leases under `STATE/networks`.
pub struct Networks {
    dir: PathBuf,
    /// The state dir's containers (for attachments).
    containers: PathBuf,
    _lock: File,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = sys::getrandom(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 64
}

/// A MAC for `ip`, as docker makes them (02:42 then the address).
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac[0] & 1 == 0).then_some(mac)
}

impl Networks {
    /// Opens hull's networks under `state_dir`, holding the networks lock
    /// until dropped.
    pub fn open(state_dir: &Path) -> Result<Networks, NetworkError> {
        let dir = state_dir.join("networks");
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let lock_path = dir.join(".lock");
        let lock = File::create(&lock_path).map_err(io_err("opening", &lock_path))?;
        sys::lock_exclusive(&lock).map_err(io_err("locking", &lock_path))?;
        Ok(Networks {
            dir,
            containers: state_dir.join("containers"),
            _lock: lock,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn leases(&self, name: &str) -> ipam::Leases {
        ipam::Leases::new(&self.dir.join(format!("{name}.leases")))
    }

    /// Every network, the default one first (it exists without setup).
    pub fn list(&self) -> Result<Vec<Network>, NetworkError> {
        let mut all = vec![self.get(DEFAULT_NETWORK)?];
        let rd = std::fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))?;
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
                (n != DEFAULT_NETWORK && valid_name(&n)).then_some(n)
            })
            .collect();
        names.sort();
        for n in names {
            all.push(self.get(&n)?);
        }
        Ok(all)
    }

    /// The network `name` (the default one is recorded on first use).
    pub fn get(&self, name: &str) -> Result<Network, NetworkError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| {
                io_err("reading", &path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == DEFAULT_NETWORK => {
                let others = self.list_user_subnets()?;
                let subnet = ipam::pick_subnet(&others).ok_or(NetworkError::NoSubnet)?;
                let n = Network {
                    name: DEFAULT_NETWORK.into(),
                    id: random_hex(32),
                    subnet,
                    gateway: subnet.host(1).ok_or(NetworkError::NoSubnet)?,
                    internal: false,
                    subnet6: None,
                    gateway6: None,
                    bridge: DEFAULT_BRIDGE.into(),
                    created: now(),
                };
                self.save(&n)?;
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NetworkError::NotFound(name.into()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn list_user_subnets(&self) -> Result<Vec<Subnet>, NetworkError> {
        let rd = std::fs::read_dir(&self.dir).map_err(io_err("reading", &self.dir))?;
        Ok(rd
            .flatten()
            .filter_map(|e| serde_json::from_slice::<Network>(&std::fs::read(e.path()).ok()?).ok())
            .map(|n| n.subnet)
            .collect())
    }

    fn save(&self, n: &Network) -> Result<(), NetworkError> {
        let path = self.path(&n.name);
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(n).expect("a Network serializes");
        std::fs::write(&tmp, json).map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("writing", &path))
    }

    /// Records a new network (its bridge is made when a container first
    /// joins it).
    pub fn create(&self, spec: &NetworkSpec) -> Result<Network, NetworkError> {
        if !valid_name(&spec.name) || matches!(spec.name.as_str(), "none" | "host") {
            return Err(NetworkError::InvalidName(spec.name.clone()));
        }
        if spec.name == DEFAULT_NETWORK || self.path(&spec.name).exists() {
            return Err(NetworkError::Exists(spec.name.clone()));
        }
        let existing = self.list()?;
        let subnet = match spec.subnet {
            Some(s) => {
                if let Some(o) = existing.iter().find(|o| o.subnet.overlaps(&s)) {
                    return Err(NetworkError::Overlap(s, o.name.clone(), o.subnet));
                }
                s
            }
            None => {
                let taken: Vec<Subnet> = existing.iter().map(|n| n.subnet).collect();
                ipam::pick_subnet(&taken).ok_or(NetworkError::NoSubnet)?
            }
        };
        let gateway = match spec.gateway {
            Some(g) if !subnet.usable(g) => {
                return Err(NetworkError::OutsideSubnet {
                    ip: g,
                    network: spec.name.clone(),
                    subnet,
                });
            }
            Some(g) => g,
            None => subnet.host(1).ok_or(NetworkError::NoSubnet)?,
        };
        let (subnet6, gateway6) = self.pick6(spec, &existing)?;
        let id = random_hex(32);
        let n = Network {
            name: spec.name.clone(),
            bridge: format!("hull-{}", &id[..8]),
            id,
            subnet,
            gateway,
            internal: spec.internal,
            subnet6,
            gateway6,
            created: now(),
        };
        self.save(&n)?;
        Ok(n)
    }

    /// The IPv6 subnet and gateway `spec` asks for (none without `--ipv6`).
    fn pick6(
        &self,
        spec: &NetworkSpec,
        existing: &[Network],
    ) -> Result<(Option<Subnet6>, Option<Ipv6Addr>), NetworkError> {
        if !spec.ipv6 {
            if spec.subnet6.is_some() || spec.gateway6.is_some() {
                return Err(NetworkError::Ipv6Off);
            }
            return Ok((None, None));
        }
        let taken: Vec<(&str, Subnet6)> = existing
            .iter()
            .filter_map(|n| Some((n.name.as_str(), n.subnet6?)))
            .collect();
        let subnet6 = match spec.subnet6 {
            Some(s) => {
                if let Some((name, o)) = taken.iter().find(|(_, o)| o.overlaps(&s)) {
                    return Err(NetworkError::Overlap6(s, name.to_string(), *o));
                }
                s
            }
            None => {
                let all: Vec<Subnet6> = taken.iter().map(|(_, s)| *s).collect();
                ipam::pick_subnet6(&all, || {
                    let mut id = [0u8; 5];
                    let _ = sys::getrandom(&mut id);
                    id
                })
                .ok_or(NetworkError::NoSubnet6)?
            }
        };
        let gateway6 = match spec.gateway6 {
            Some(g) if !subnet6.contains(g) || g == subnet6.addr => {
                return Err(NetworkError::OutsideSubnet6 {
                    ip: g,
                    network: spec.name.clone(),
                    subnet: subnet6,
                });
            }
            Some(g) => g,
            None => subnet6.host(1).ok_or(NetworkError::NoSubnet6)?,
        };
        Ok((Some(subnet6), Some(gateway6)))
    }

    /// Every attachment of a container (its first network's and those
    /// `hull network connect` added), from the containers' state dirs.
    pub fn attachments(&self) -> Vec<Attachment> {
        let Ok(rd) = std::fs::read_dir(&self.containers) else {
            return Vec::new();
        };
        rd.flatten()
            .flat_map(|e| connect::all_attachments(&e.path()))
            .map(|(_, a)| a)
            .collect()
    }

    /// Removes network `name`: refused while containers are attached.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        if name == DEFAULT_NETWORK {
            return Err(NetworkError::Default(name.into()));
        }
        let n = self.get(name)?;
        let users: Vec<String> = self
            .attachments()
            .into_iter()
            .filter(|a| a.network == name)
            .map(|a| a.name)
            .collect();
        if !users.is_empty() {
            return Err(NetworkError::InUse(name.into(), users.join(", ")));
        }
        dns::stop(&self.dir, &n);
        Netlink::open()?.delete(&n.bridge)?;
        let _ = std::fs::remove_dir_all(self.dir.join(format!("{name}.leases")));
        let path = self.path(name);
        std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
        self.sync()
    }

    /// Removes every user-defined network no container is attached to;
    /// returns their names.
    pub fn prune(&self) -> Result<Vec<String>, NetworkError> {
        let used: Vec<String> = self.attachments().into_iter().map(|a| a.network).collect();
        let mut gone = Vec::new();
        for n in self.list()? {
            if n.name != DEFAULT_NETWORK && !used.contains(&n.name) {
                self.remove(&n.name)?;
                gone.push(n.name);
            }
        }
        Ok(gone)
    }

    /// Rebuilds hull's nftables table from the networks in use and the
    /// attached containers, and has each user-defined network's resolver
    /// answer for its containers (stopped where none is left).
    pub fn sync(&self) -> Result<(), NetworkError> {
        let attached = self.attachments();
        let (used, unused): (Vec<Network>, Vec<Network>) = self
            .list()?
            .into_iter()
            .partition(|n| attached.iter().any(|a| a.network == n.name));
        for n in &unused {
            dns::stop(&self.dir, n);
        }
        let rules = firewall::ruleset(&used, &attached);
        firewall::apply(&rules, used.is_empty(), &self.dir.join(".ruleset.json"))?;
        for n in used.iter().filter(|n| n.resolves_names()) {
            let on: Vec<&Attachment> = attached.iter().filter(|a| a.network == n.name).collect();
            dns::serve(&self.dir, n, &on)?;
        }
        Ok(())
    }

    /// Frees what died containers still hold: a lease whose holder has no
    /// live attachment (kill -9 of everything, then any hull command).
    pub fn reclaim(&self) {
        let attached = self.attachments();
        let Ok(all) = self.list() else { return };
        for n in all {
            let leases = self.leases(&n.name);
            for (ip, holder) in leases.all() {
                if !attached.iter().any(|a| a.container == holder) {
                    leases.free(ip, &holder);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::attach::hosts_file;
    use super::*;

    #[test]
    fn networks_are_created_listed_and_refused_as_docker_does() {
        let t = tempfile::tempdir().unwrap();
        let nets = Networks::open(t.path()).unwrap();
        let spec = |name: &str, subnet: Option<&str>| NetworkSpec {
            name: name.into(),
            subnet: subnet.map(|s| s.parse().unwrap()),
            ..Default::default()
        };
        let a = nets.create(&spec("a", Some("10.200.0.0/24"))).unwrap();
        assert_eq!(a.gateway, "10.200.0.1".parse::<Ipv4Addr>().unwrap());
        assert!(a.bridge.len() <= 15 && a.bridge.starts_with("hull-"));
        let e = nets
            .create(&spec("b", Some("10.200.0.128/25")))
            .unwrap_err();
        assert!(matches!(e, NetworkError::Overlap(..)), "{e}");
        assert!(matches!(
            nets.create(&spec("a", None)).unwrap_err(),
            NetworkError::Exists(_)
        ));
        assert!(matches!(
            nets.create(&spec("bridge", None)).unwrap_err(),
            NetworkError::Exists(_)
        ));
        assert!(matches!(
            nets.create(&spec("-x", None)).unwrap_err(),
            NetworkError::InvalidName(_)
        ));
        let bad_gw = NetworkSpec {
            gateway: Some("10.201.1.1".parse().unwrap()),
            ..spec("c", Some("10.201.0.0/24"))
        };
        assert!(matches!(
            nets.create(&bad_gw).unwrap_err(),
            NetworkError::OutsideSubnet { .. }
        ));
        let names: Vec<String> = nets.list().unwrap().into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["bridge", "a"]);
        let def = nets.get("bridge").unwrap();
        assert!(!def.subnet.overlaps(&a.subnet));
        assert!(matches!(
            nets.remove("bridge").unwrap_err(),
            NetworkError::Default(_)
        ));
    }

    #[test]
    fn hosts_file_lists_self_peers_and_extra_hosts() {
        let req = Request {
            hostname: "web".into(),
            extra_hosts: vec![("db.local".into(), "10.0.0.9".parse().unwrap())],
            ..Default::default()
        };
        let peer = Attachment {
            container: "c".into(),
            name: "db".into(),
            network: "n".into(),
            ip: "10.1.0.3".parse().unwrap(),
            ip6: Some("fd00::3".parse().unwrap()),
            mac: mac_for("10.1.0.3".parse().unwrap()),
            host_veth: "hvc".into(),
            ports: Vec::new(),
            aliases: vec!["database".into()],
        };
        let h = hosts_file(
            &req,
            Some("10.1.0.2".parse().unwrap()),
            Some("fd00::2".parse().unwrap()),
            &[peer],
        );
        assert!(h.contains("10.1.0.2\tweb\n"), "{h}");
        assert!(h.contains("10.1.0.3\tdb database\n"), "{h}");
        assert!(h.contains("fd00::2\tweb\n"), "{h}");
        assert!(h.contains("fd00::3\tdb database\n"), "{h}");
        assert!(h.contains("10.0.0.9\tdb.local\n"), "{h}");
        assert_eq!(mac_for("10.1.0.3".parse().unwrap()), "02:42:0a:01:00:03");
        assert_eq!(parse_mac("02:42:0a:01:00:03"), Some([2, 0x42, 10, 1, 0, 3]));
        assert_eq!(parse_mac("01:00:00:00:00:00"), None, "multicast");
    }
}
