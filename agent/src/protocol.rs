//! hull's host<->agent protocol, version 1.
//!
//! A connection carries one process session. Frames are
//! `u32 length (big endian) | u8 kind | payload`, where length counts the
//! kind byte and the payload and is at most [`MAX_FRAME`]. Control messages
//! are JSON; stdio data is raw bytes. The agent speaks first ([`Kind::Hello`]),
//! the host answers with [`Kind::Start`]; then stdio flows both ways until the
//! agent sends [`Kind::Exit`] (or [`Kind::Error`] when the process could not
//! start). A connection whose first host frame is a [`Kind::Signal`]
//! instead signals every process of the container (all but the agent) and
//! gets an [`Exit`] with code 0 back; one whose first host frame is a
//! [`Kind::DnsRelay`] carries relayed DNS messages ([`Kind::Dns`]) both
//! ways while it is open. Anything malformed or oversized is an error, never a panic, and
//! nothing larger than one frame is ever allocated.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// Largest frame (kind byte + payload).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest stdio payload the sender puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;
/// The vsock port the agent listens on in a VM.
pub const AGENT_PORT: u32 = 1024;

/// What the agent prints on the guest console once it listens.
pub const READY_LINE: &str = "hull-agent: ready";

/// Boot-timer port marks the agent writes (see hull-vmm's boot timer).
pub const MARK_AGENT_START: u8 = 1;
pub const MARK_AGENT_READY: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Start = 2,
    Stdin = 3,
    StdinClose = 4,
    Stdout = 5,
    Stderr = 6,
    Resize = 7,
    Signal = 8,
    Exit = 9,
    Error = 10,
    Started = 11,
    Shutdown = 12,
    /// A piece of the tar of a RUN step's changes (raw bytes; agent to
    /// host, after the process ended and before its Exit, when the Start
    /// asked for it with `export_upper`).
    Layer = 13,
    /// Host to agent, a connection's first frame ([`DnsRelay`]): the agent
    /// takes DNS queries in the guest and relays them over this connection.
    DnsRelay = 14,
    /// One relayed DNS message ([`DnsPacket`], raw): a query from the
    /// agent, its answer from the host.
    Dns = 15,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Start,
            3 => Stdin,
            4 => StdinClose,
            5 => Stdout,
            6 => Stderr,
            7 => Resize,
            8 => Signal,
            9 => Exit,
            10 => Error,
            11 => Started,
            12 => Shutdown,
            13 => Layer,
            14 => DnsRelay,
            15 => Dns,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind:?} message")]
    Json {
        kind: Kind,
        source: serde_json::Error,
    },
    #[error("expected {expected:?}, got {got:?}")]
    Unexpected { expected: Kind, got: Kind },
    #[error("the peer speaks protocol version {0}, this side {VERSION}")]
    Version(u32),
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, payload: Vec<u8>) -> Frame {
        Frame { kind, payload }
    }

    /// A frame carrying `msg` as JSON.
    pub fn json<T: Serialize>(kind: Kind, msg: &T) -> Frame {
        Frame::new(
            kind,
            serde_json::to_vec(msg).expect("protocol messages serialize"),
        )
    }

    /// Decodes the JSON payload.
    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.payload).map_err(|source| ProtocolError::Json {
            kind: self.kind,
            source,
        })
    }

    /// Decodes the payload of a frame that must be of `kind`.
    pub fn expect<T: for<'de> Deserialize<'de>>(&self, kind: Kind) -> Result<T, ProtocolError> {
        if self.kind != kind {
            return Err(ProtocolError::Unexpected {
                expected: kind,
                got: self.kind,
            });
        }
        self.parse()
    }
}

/// Writes one frame (in a single write, so frames from several threads
/// sharing a locked writer never interleave).
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), ProtocolError> {
    let len = f.payload.len() + 1;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(f.kind as u8);
    buf.extend_from_slice(&f.payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(ProtocolError::Empty);
    }
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    let kind = Kind::from_u8(buf[0]).ok_or(ProtocolError::UnknownKind(buf[0]))?;
    buf.remove(0);
    Ok(Some(Frame { kind, payload: buf }))
}

/// Timing marks, in milliseconds since the guest kernel started (CLOCK_BOOTTIME).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Marks {
    /// The agent began running as PID 1.
    pub agent_start_ms: f64,
    /// Root filesystem mounted.
    pub rootfs_ms: f64,
    /// Listening: ready for the host.
    pub ready_ms: f64,
}

/// The agent's first message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub marks: Marks,
}

/// Who the process runs as: a name or number, and optionally a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub user: String,
    pub group: Option<String>,
}

/// A resource limit (setrlimit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// Name as in `ulimit`/OCI without the RLIMIT_ prefix: NOFILE, NPROC, ...
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

/// A mount the agent makes in the container's root, after the image's
/// overlay and before the container's process (`hull-agent ns --mount JSON`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub kind: MountKind,
    /// Absolute path inside the container; no component of it may be a
    /// symlink in the image (the agent refuses rather than follow one).
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum MountKind {
    /// A host directory (ns backend), id-mapped where the container has a
    /// user namespace of its own.
    Bind { source: String },
    /// A fresh tmpfs; `size` in bytes, `mode` of its root directory.
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
    /// A host directory a microVM reaches through the virtio-fs device
    /// with this tag (hull-vmm serves it; read-only there too when
    /// `readonly`).
    Virtiofs { tag: String },
}

/// What hull tells a microVM's agent about its root and its mounts: at a
/// cold boot before anything connects, on the kernel command line, as the
/// environment variable [`VM_SETUP_ENV`] holding this JSON in hex (the
/// kernel passes unknown `KEY=VALUE` words to init's environment; hex has
/// no character the command line would split or quote); to a guest
/// restored from a template, in the main Start's [`RootDisks`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmSetup {
    /// The user's mounts, in order.
    pub mounts: Vec<Mount>,
    /// `--read-only`: the root is remounted read-only after the mounts.
    pub read_only: bool,
    /// The root filesystem is this virtio-fs tag (a host directory) rather
    /// than the layer disks.
    pub root_tag: Option<String>,
}

/// The environment variable that carries a [`VmSetup`].
pub const VM_SETUP_ENV: &str = "HULL_VM_SETUP";

impl VmSetup {
    /// `HULL_VM_SETUP=<hex of the JSON>`, a word for the kernel command line.
    pub fn to_cmdline_word(&self) -> String {
        let json = serde_json::to_vec(self).expect("a VmSetup serializes");
        let mut s = format!("{VM_SETUP_ENV}=");
        for b in json {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Reads what [`VmSetup::to_cmdline_word`] wrote (the value only).
    pub fn from_hex(hex: &str) -> Result<VmSetup, String> {
        let bytes = hex.as_bytes();
        if !bytes.len().is_multiple_of(2) {
            return Err("odd length".into());
        }
        let json: Vec<u8> = bytes
            .chunks(2)
            .map(|c| {
                std::str::from_utf8(c)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
                    .ok_or_else(|| format!("not hex: {:?}", String::from_utf8_lossy(c)))
            })
            .collect::<Result<_, _>>()?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    }
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The main process (its end ends the container) or an `exec`.
    pub main: bool,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
    /// Set once, by the main process's Start.
    pub hostname: Option<String>,
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
    /// Whether the host will send stdin (else the process gets /dev/null).
    pub stdin: bool,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Makes a guest restored from a snapshot its own (main process, VM
    /// only): every clone of a template starts with the template's entropy
    /// pool and clock.
    #[serde(default)]
    pub freshen: Option<Freshen>,
    /// The container's network, applied by the main process's Start before
    /// the process runs.
    #[serde(default)]
    pub network: Option<NetworkSetup>,
    /// hull build in a microVM: once the main process ended, send the
    /// writable layer's changes as a tar in [`Kind::Layer`] frames before
    /// the Exit (whiteouts as `.wh.NAME`, opaque directories with
    /// `.wh..wh..opq`), so the host never mounts the guest's disk.
    #[serde(default)]
    pub export_upper: bool,
    /// The container's disks in a guest restored from a template (main
    /// process, VM only): the agent mounts them before the process runs.
    #[serde(default)]
    pub root_disks: Option<RootDisks>,
    /// What the process may do (OCI's additionalGids, capabilities,
    /// noNewPrivileges, seccomp; hull-runtime sends them). None: the
    /// agent's defaults, root's full capability set and no filter.
    #[serde(default)]
    pub privileges: Option<Privileges>,
}

impl Start {
    /// A container's main process: `argv` with `env`, as root in `/`, with
    /// no stdin and no terminal (24x80 should a caller turn `tty` on).
    /// Callers set what differs with struct update syntax.
    pub fn main(argv: Vec<String>, env: Vec<String>) -> Self {
        Start {
            main: true,
            argv,
            env,
            cwd: "/".into(),
            user: User {
                user: "0".into(),
                group: None,
            },
            rows: 24,
            cols: 80,
            ..Start::default()
        }
    }
}

/// Most seccomp filters one process gets (the kernel stacks them).
pub const MAX_SECCOMP_FILTERS: usize = 8;
/// Most instructions in one filter (the kernel's BPF_MAXINSNS).
pub const MAX_BPF_INSTRUCTIONS: usize = 4096;

/// A process's groups, capabilities and filters beyond its user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Privileges {
    /// Supplementary groups added to those of the user's /etc/group entries.
    pub additional_gids: Vec<u32>,
    /// The five capability sets; None leaves them as the agent has them.
    pub capabilities: Option<Capabilities>,
    pub no_new_privileges: bool,
    /// Classic BPF seccomp programs, installed in order (the host compiles
    /// them; at most [`MAX_SECCOMP_FILTERS`] of [`MAX_BPF_INSTRUCTIONS`]).
    pub seccomp: Vec<Vec<BpfInstruction>>,
}

/// Capability sets as bit masks: bit N is capability number N.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// One `struct sock_filter`: code, jump if true, jump if false, k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BpfInstruction(pub u16, pub u8, pub u8, pub u32);

/// Linux's capability names (`CAP_` prefix optional, any case), by number.
const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of capability `name` (`CAP_NET_RAW` or `net_raw`).
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| i as u32)
}

/// What a template's empty disk slots hold after a restore: disks with
/// serials `layer0`.. (bottom first) and, with `upper`, the writable disk
/// with serial `upper`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootDisks {
    pub layers: u32,
    pub upper: bool,
    /// The root's mounts and flags, which a cold-booted guest reads from
    /// its command line ([`VM_SETUP_ENV`]): a template's was booted
    /// without them.
    #[serde(default)]
    pub setup: VmSetup,
}

/// The kernel command line word (passed to init's environment) that boots
/// the agent as a template: no disks yet, its root made when a restored
/// clone's main Start brings [`RootDisks`].
pub const TEMPLATE_ENV: &str = "HULL_TEMPLATE";

/// Most entropy bytes a [`Freshen`] carries.
pub const MAX_ENTROPY: usize = 512;

/// What a restored guest takes from the host before its container starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshen {
    /// Fresh random bytes from the host (at most [`MAX_ENTROPY`]), mixed
    /// into the guest kernel's pool, which is then reseeded (RNDADDENTROPY
    /// and RNDRESEEDCRNG: VMGenID, which would tell the kernel itself,
    /// needs ACPI, which hull's microVMs do not have).
    pub entropy: Vec<u8>,
    /// The host's wall clock, nanoseconds since the epoch: the guest's is
    /// stepped to it (the template's clock stopped when it was saved).
    pub wall_clock_ns: u64,
}

impl Freshen {
    /// Fresh bytes and the current time, on the host.
    pub fn now() -> io::Result<Freshen> {
        let mut entropy = vec![0u8; 64];
        let mut filled = 0;
        while filled < entropy.len() {
            // SAFETY: the pointer and length describe the unfilled tail.
            let n = unsafe {
                libc::getrandom(
                    entropy[filled..].as_mut_ptr().cast(),
                    entropy.len() - filled,
                    0,
                )
            };
            match n {
                n if n > 0 => filled += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(io::Error::other)?;
        let wall_clock_ns = u64::try_from(since.as_nanos()).map_err(io::Error::other)?;
        Ok(Freshen {
            entropy,
            wall_clock_ns,
        })
    }
}

/// The container's network as the agent sets it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSetup {
    /// The interface to configure (vm: the virtio-net device, which already
    /// has the MAC); None when the host configured it (ns) or there is none
    /// (`--network none`: only `lo`).
    pub interface: Option<Interface>,
    /// The contents of the container's /etc/hosts.
    pub hosts: Option<String>,
    /// The contents of the container's /etc/resolv.conf.
    pub resolv_conf: Option<String>,
}

/// One IPv4 interface: address, prefix, MTU and default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The guest's name for it (`eth0`).
    pub name: String,
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
    /// The default route's gateway.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// On a dual-stack network, the IPv6 address and route too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Interface6>,
    /// The MAC address the interface takes (`aa:bb:cc:dd:ee:ff`): a guest
    /// restored from a template has the template's until it is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Routes through it other than the default ones (an engine's
    /// namespace may have more), IPv4 and IPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A route through an [`Interface`]: `destination/prefix_len`, via
/// `gateway` or on the link when there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub destination: std::net::IpAddr,
    pub prefix_len: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<std::net::IpAddr>,
}

/// An interface's IPv6 address, prefix and default route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface6 {
    pub address: std::net::Ipv6Addr,
    pub prefix_len: u8,
    /// The IPv6 default route's gateway.
    pub gateway: Option<std::net::Ipv6Addr>,
}

/// Asks the agent to take DNS queries on `address` port 53 in the guest
/// (UDP) and relay them to the host, which sends them on to the resolver
/// the engine put on its namespace's loopback (`nameserver 127.0.0.11`:
/// docker's), out of the guest's reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRelay {
    pub address: std::net::Ipv4Addr,
}

/// The largest DNS message relayed (a UDP payload).
pub const MAX_DNS: usize = 65_507;

/// A relayed DNS message and the guest client it came from (a query) or
/// goes to (its answer). Payload: the client's port (2 bytes, big endian)
/// and IPv4 address (4 bytes), then the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPacket {
    pub client: std::net::SocketAddrV4,
    pub message: Vec<u8>,
}

impl DnsPacket {
    pub fn frame(&self) -> Frame {
        let mut payload = Vec::with_capacity(6 + self.message.len());
        payload.extend_from_slice(&self.client.port().to_be_bytes());
        payload.extend_from_slice(&self.client.ip().octets());
        payload.extend_from_slice(&self.message);
        Frame::new(Kind::Dns, payload)
    }

    /// The packet in `f`; None unless it is a [`Kind::Dns`] frame with a
    /// client and a message of at most [`MAX_DNS`] bytes.
    pub fn parse(f: &Frame) -> Option<DnsPacket> {
        if f.kind != Kind::Dns {
            return None;
        }
        let (head, message) = f.payload.split_first_chunk::<6>()?;
        if message.is_empty() || message.len() > MAX_DNS {
            return None;
        }
        let port = u16::from_be_bytes([head[0], head[1]]);
        let ip = std::net::Ipv4Addr::new(head[2], head[3], head[4], head[5]);
        Some(DnsPacket {
            client: std::net::SocketAddrV4::new(ip, port),
            message: message.to_vec(),
        })
    }
}

/// The process started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    /// Milliseconds since the guest kernel started.
    pub at_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub signal: i32,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// The exit status, when it exited.
    pub code: Option<i32>,
    /// The signal, when it was killed by one.
    pub signal: Option<i32>,
    /// Why, when the agent knows more (e.g. "out of memory").
    pub reason: Option<String>,
    /// Milliseconds since the guest kernel started.
    pub at_ms: f64,
}

impl Exit {
    /// The status a docker-style CLI exits with: the code, or 128 + signal.
    pub fn status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 125,
        }
    }
}

/// The process could not start (or the session failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub message: String,
    /// 126 not executable, 127 not found, 125 anything else.
    pub exit_code: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_packets_round_trip_and_malformed_ones_are_refused() {
        let p = DnsPacket {
            client: "127.0.0.1:40000".parse().unwrap(),
            message: vec![1, 2, 3],
        };
        assert_eq!(DnsPacket::parse(&p.frame()), Some(p.clone()));
        let short = Frame::new(Kind::Dns, vec![0; 6]);
        assert_eq!(DnsPacket::parse(&short), None, "no message");
        assert_eq!(DnsPacket::parse(&Frame::new(Kind::Dns, vec![0; 3])), None);
        let big = Frame::new(Kind::Dns, vec![0; 6 + MAX_DNS + 1]);
        assert_eq!(DnsPacket::parse(&big), None, "larger than a UDP payload");
        let other = Frame::new(Kind::Stdout, p.frame().payload);
        assert_eq!(DnsPacket::parse(&other), None, "not a Dns frame");
    }

    #[test]
    fn a_vm_setup_round_trips_through_the_command_line() {
        let setup = VmSetup {
            mounts: vec![Mount {
                kind: MountKind::Virtiofs { tag: "vol0".into() },
                target: "/data dir".into(),
                readonly: true,
            }],
            read_only: true,
            root_tag: Some("root".into()),
        };
        let word = setup.to_cmdline_word();
        let hex = word.strip_prefix("HULL_VM_SETUP=").unwrap();
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(VmSetup::from_hex(hex).unwrap(), setup);
        assert!(VmSetup::from_hex("7").is_err());
        assert!(VmSetup::from_hex("zz").is_err());
    }

    #[test]
    fn freshen_carries_fresh_bytes_and_the_time_and_old_starts_still_parse() {
        let a = Freshen::now().unwrap();
        let b = Freshen::now().unwrap();
        assert_eq!(a.entropy.len(), 64);
        assert_ne!(a.entropy, b.entropy);
        let host = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(host - a.wall_clock_ns < 2_000_000_000);
        let start = Start {
            main: true,
            freshen: Some(a.clone()),
            ..Default::default()
        };
        let back: Start = serde_json::from_slice(&serde_json::to_vec(&start).unwrap()).unwrap();
        assert_eq!(back.freshen, Some(a));
        // A host that predates Freshen sends none.
        let old: Start = serde_json::from_str(
            r#"{"main":true,"argv":["sh"],"env":[],"cwd":"/","user":{"user":"0","group":null},
                "hostname":null,"tty":false,"rows":24,"cols":80,"stdin":false}"#,
        )
        .unwrap();
        assert_eq!(old.freshen, None);
    }

    #[test]
    fn capabilities_are_numbered_as_linux_does_and_privileges_round_trip() {
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("net_raw"), Some(13));
        assert_eq!(capability_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_BOGUS"), None);
        let start = Start {
            privileges: Some(Privileges {
                additional_gids: vec![10, 1234],
                capabilities: Some(Capabilities {
                    bounding: 1 << 13,
                    ..Default::default()
                }),
                no_new_privileges: true,
                seccomp: vec![vec![BpfInstruction(6, 0, 0, 0x7fff_0000)]],
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&start).unwrap();
        assert!(json.contains("[[[6,0,0,2147418112]]]"), "{json}");
        assert_eq!(serde_json::from_str::<Start>(&json).unwrap(), start);
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let start = Start {
            main: true,
            argv: vec!["sh".into()],
            ..Default::default()
        };
        write_frame(&mut buf, &Frame::json(Kind::Start, &start)).unwrap();
        write_frame(&mut buf, &Frame::new(Kind::Stdout, b"out".to_vec())).unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(f.expect::<Start>(Kind::Start).unwrap(), start);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((f.kind, f.payload.as_slice()), (Kind::Stdout, &b"out"[..]));
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_empty_unknown_and_truncated_frames_are_errors() {
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]),
            Err(ProtocolError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0][..]),
            Err(ProtocolError::Empty)
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 1, 200][..]),
            Err(ProtocolError::UnknownKind(200))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 9, 5][..]),
            Err(ProtocolError::Io(_))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0][..]),
            Err(ProtocolError::Io(_))
        ));
    }

    #[test]
    fn an_error_shows_its_cause_once() {
        use std::error::Error;
        let e = Frame::new(Kind::Start, b"{not json".to_vec())
            .parse::<Start>()
            .unwrap_err();
        assert_eq!(e.to_string(), "malformed Start message");
        let cause = e.source().unwrap().to_string();
        assert!(cause.contains("key must be a string"), "{cause}");
        let e = read_frame(&mut &[0u8, 0][..]).unwrap_err();
        assert_eq!(e.to_string(), "connection");
        assert!(e.source().unwrap().to_string().contains("end of file"));
    }

    #[test]
    fn malformed_json_and_wrong_kind() {
        let f = Frame::new(Kind::Start, b"{not json".to_vec());
        assert!(matches!(
            f.parse::<Start>(),
            Err(ProtocolError::Json { .. })
        ));
        let f = Frame::json(Kind::Resize, &Resize { rows: 1, cols: 2 });
        assert!(matches!(
            f.expect::<Start>(Kind::Start),
            Err(ProtocolError::Unexpected { .. })
        ));
    }

    #[test]
    fn decoder_survives_arbitrary_bytes() {
        // A cheap property test: every prefix of every pseudo-random buffer
        // decodes to frames or an error, without panicking.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            let mut r = &buf[..];
            while let Ok(Some(_)) = read_frame(&mut r) {}
        }
    }

    #[test]
    fn exit_status_like_docker() {
        let e = |code, signal| Exit {
            code,
            signal,
            reason: None,
            at_ms: 0.0,
        };
        assert_eq!(e(Some(3), None).status(), 3);
        assert_eq!(e(None, Some(15)).status(), 143);
    }
}
