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

pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod link;
pub mod ports;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use hull_agent::protocol::{Interface, NetworkSetup};
use serde::{Deserialize, Serialize};

pub use ipam::Subnet;
use link::{LinkError, Netlink};
pub use ports::{PortMapping, Proto};

use crate::sandbox::Isolation;
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
    #[error("port {0}/{1} is already published by container {2}")]
    PortInUse(u16, &'static str, String),
    #[error("network {0} has active endpoints: {1}")]
    InUse(String, String),
    #[error("the default network {0} cannot be removed")]
    Default(String),
    #[error(
        "--network host shares the host's network namespace: a microVM has none to share (use --network bridge, or --isolation ns)"
    )]
    HostForVm,
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Firewall(#[from] firewall::FirewallError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError {
    let path = path.to_path_buf();
    move |source| NetworkError::Io { what, path, source }
}

/// One network, as `hull network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub id: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    pub internal: bool,
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
}

/// What `hull network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Option<Subnet>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
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
            Ok(data) => serde_json::from_slice(&data).map_err(|e| NetworkError::Io {
                what: "reading",
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
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
        let id = random_hex(32);
        let n = Network {
            name: spec.name.clone(),
            bridge: format!("hull-{}", &id[..8]),
            id,
            subnet,
            gateway,
            internal: spec.internal,
            created: now(),
        };
        self.save(&n)?;
        Ok(n)
    }

    /// Every attachment of a container, from the containers' state dirs.
    pub fn attachments(&self) -> Vec<Attachment> {
        let Ok(rd) = std::fs::read_dir(&self.containers) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let data = std::fs::read(e.path().join(ATTACHMENT_FILE)).ok()?;
                serde_json::from_slice(&data).ok()
            })
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

/// The bridge of network `n` up with its gateway address, forwarding on.
fn ensure_bridge(nl: &Netlink, n: &Network) -> Result<(), NetworkError> {
    nl.ensure_bridge(&n.bridge, n.gateway, n.subnet.prefix_len)?;
    for (path, what) in [
        (
            "/proc/sys/net/ipv4/ip_forward".to_string(),
            "enabling IP forwarding in",
        ),
        (
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.bridge),
            "enabling route_localnet in",
        ),
    ] {
        std::fs::write(&path, "1").map_err(|source| NetworkError::Io {
            what,
            path: path.into(),
            source,
        })?;
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
/// route; for `Backend::Vm` eth0 stays without an address and a tap is
/// made beside it, tied to it by tc redirects both ways; its fd is
/// returned for the VMM (the guest takes `ip` and `mac`).
pub fn attach_netns(
    netns: &Path,
    network: &Network,
    host_veth: &str,
    ip: Ipv4Addr,
    mac: [u8; 6],
    backend: Backend,
) -> Result<Option<OwnedFd>, LinkError> {
    let nl = Netlink::open()?;
    let ns = File::open(netns).map_err(|source| LinkError::Io {
        what: format!("opening {}", netns.display()),
        source,
    })?;
    let peer = format!("{host_veth}p");
    nl.veth_into(host_veth, &peer, &network.bridge, MTU, &ns)?;
    let prefix_len = network.subnet.prefix_len;
    // An --internal network has no way out: no default route (as docker).
    let gateway = (!network.internal).then_some(network.gateway);
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
        let eth = nl.rename(&peer, GUEST_IFNAME, mac)?;
        nl.set_up(eth, GUEST_IFNAME)?;
        if let Some(lo) = nl.index("lo")? {
            nl.set_up(lo, "lo")?;
        }
        match backend {
            Backend::Ns => {
                nl.address_and_route(eth, ip, prefix_len, gateway)?;
                Ok(None)
            }
            Backend::Vm => {
                let tap = link::create_tap(TAP_IFNAME)?;
                let t = nl
                    .index(TAP_IFNAME)?
                    .ok_or_else(|| LinkError::NoLink(TAP_IFNAME.into()))?;
                nl.set_up(t, TAP_IFNAME)?;
                nl.redirect_both_ways((eth, GUEST_IFNAME), (t, TAP_IFNAME))?;
                Ok(Some(tap))
            }
        }
    })
}

fn hosts_file(req: &Request, ip: Option<Ipv4Addr>, peers: &[Attachment]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{}\n", req.hostname));
    }
    for p in peers {
        let mut names = vec![p.name.clone()];
        names.extend(p.aliases.iter().cloned());
        s.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
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
        link::create_netns(&netns)?;
        return Ok(Prepared {
            netns: Some(netns),
            tap: None,
            setup: NetworkSetup {
                interface: None,
                hosts: Some(hosts_file(req, None, &[])),
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
        None => leases
            .next_free(&network.subnet, network.gateway)
            .ok_or_else(|| NetworkError::Full(name.clone()))?,
    };
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
        let tap = attach_netns(&netns, &network, &att.host_veth, ip, mac, backend)?;
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
    });
    Ok(Prepared {
        netns: Some(netns),
        tap: tap.map(|t| (t, mac_text)),
        setup: NetworkSetup {
            interface,
            hosts: Some(hosts_file(req, Some(ip), &peers)),
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

fn ports_snapshot(p: &[PortMapping]) -> Vec<u16> {
    p.iter().map(|m| m.host_port).filter(|&x| x != 0).collect()
}

/// A host port for `proto` that neither a container nor this request
/// publishes and that nothing listens on, from docker's ephemeral range.
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
    let att = attachment(dir);
    let netns = dir.join(NETNS_FILE);
    if att.is_none() && !netns.exists() {
        return;
    }
    let Ok(nets) = Networks::open(state_dir) else {
        return;
    };
    if let Some(a) = &att {
        nets.leases(&a.network).free(a.ip, &a.container);
        if let Ok(nl) = Netlink::open() {
            let _ = nl.delete(&a.host_veth);
        }
        let _ = std::fs::remove_file(dir.join(ATTACHMENT_FILE));
    }
    link::remove_netns(&netns);
    if att.is_some() {
        if let Err(e) = nets.sync() {
            log::warn!("{}", crate::error::chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
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
            mac: mac_for("10.1.0.3".parse().unwrap()),
            host_veth: "hvc".into(),
            ports: Vec::new(),
            aliases: vec!["database".into()],
        };
        let h = hosts_file(&req, Some("10.1.0.2".parse().unwrap()), &[peer]);
        assert!(h.contains("10.1.0.2\tweb\n"), "{h}");
        assert!(h.contains("10.1.0.3\tdb database\n"), "{h}");
        assert!(h.contains("10.0.0.9\tdb.local\n"), "{h}");
        assert_eq!(mac_for("10.1.0.3".parse().unwrap()), "02:42:0a:01:00:03");
        assert_eq!(parse_mac("02:42:0a:01:00:03"), Some([2, 0x42, 10, 1, 0, 3]));
        assert_eq!(parse_mac("01:00:00:00:00:00"), None, "multicast");
    }
}
