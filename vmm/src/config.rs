//! What a VM is made of: from `hull-vmm`'s flags, or a [`VmConfig`] passed
//! whole as JSON, in a file (`--config FILE`) or through an inherited file
//! descriptor (`--config-fd N`); flags given as well override it.
//!
//! The JSON is the serde form of [`VmConfig`]: an object with the fields
//! below, unknown fields rejected, absent ones taking their defaults. Only
//! `kernel` is required:
//! ```json
//! {
//!   "kernel": "/path/to/vmlinux",
//!   "initrd": "/path/to/initrd.cpio",
//!   "cmdline": "hull.debug=1",
//!   "vcpus": 2,
//!   "mem_mib": 256,
//!   "serial": "none",
//!   "boot_timer": false,
//!   "disks": [{ "path": "/path/to/layer0.erofs", "read_only": true, "id": "layer0" }],
//!   "rng": true,
//!   "vsock": { "cid": 3, "uds": "/path/to/vsock.sock" },
//!   "nets": [{ "tap": "tap0", "mac": "02:00:00:00:00:01" }],
//!   "fs": [{ "tag": "vol0", "path": "/srv/data", "read_only": false }],
//!   "fs_dax_mib": 1024,
//!   "huge_pages": true
//! }
//! ```

use std::fmt;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::MAX_VCPUS;

/// What the kernel always gets, before the user's `--cmdline`: the serial
/// console, reboot through the i8042 (which ends the VM cleanly), reboot at
/// once on panic, and no probing for hardware that is not there.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodules \
     8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
     tsc=reliable no_timer_check cryptomgr.notests quiet";

/// Smallest guest memory accepted, MiB.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest memory accepted, MiB (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--vcpus {0}: must be 1 to {MAX_VCPUS}")]
    Vcpus(u32),
    #[error("--mem {0}: must be {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB")]
    Mem(u64),
    #[error("no kernel given (--kernel PATH)")]
    NoKernel,
    #[error("reading the configuration from {from}")]
    Read {
        from: ConfigOrigin,
        source: std::io::Error,
    },
    #[error("the configuration in {from} is not a valid VmConfig")]
    Parse {
        from: ConfigOrigin,
        source: serde_json::Error,
    },
    #[error("--serial {0:?}: expected stdout, none or a file path")]
    Serial(String),
    #[error("--disk {0:?}: expected PATH[,ro][,id=NAME]")]
    Disk(String),
    #[error("{0} disks: at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("{disks} disks do not fit in {slots} disk slots (at most {MAX_DISKS})")]
    DiskSlots { disks: usize, slots: usize },
    #[error("--vsock-cid {0}: guest CIDs start at 3")]
    VsockCid(u64),
    #[error("--net {0:?}: expected tap=NAME or fd=N, then optionally ,mac=MAC")]
    Net(String),
    #[error(
        "MAC address {0:?}: expected six hex bytes like 02:00:00:00:00:01, unicast and not all zero"
    )]
    Mac(String),
    #[error("{0} network devices: at most {MAX_NETS}")]
    TooManyNets(usize),
    #[error("a network device needs exactly one of a tap name (1 to 15 bytes) or an fd")]
    NetBackend,
    #[error("fd {0} is given to more than one network device")]
    NetFdTwice(i32),
    #[error(
        "--fs {0:?}: expected tag=TAG,path=DIR[,ro][,cache=auto|never|always] (a tag of 1 to 36 bytes)"
    )]
    Fs(String),
    #[error("--fs-dax {0}: a DAX window is a multiple of 2 MiB, at most {MAX_FS_DAX_MIB}")]
    FsDax(u64),
    #[error("{0} shared directories: at most {MAX_FS}")]
    TooManyFs(usize),
    #[error("virtio-fs tag {0:?} is given twice")]
    FsTagTwice(String),
    #[error("{shares} shared directories do not fit in {slots} fs slots (at most {MAX_FS})")]
    FsSlots { shares: usize, slots: usize },
    #[error("shared directory {index} has tag {tag:?}; fs slot {index}'s tag is {want:?}")]
    FsSlotTag {
        index: usize,
        tag: String,
        want: String,
    },
    #[error(
        "a VM with a shared directory (--fs) cannot be snapshotted: the open host files of its virtio-fs server are not part of a snapshot"
    )]
    FsSnapshot,
}

/// Where a JSON configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    File(PathBuf),
    Fd(i32),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::File(p) => write!(f, "{}", p.display()),
            ConfigOrigin::Fd(n) => write!(f, "fd {n}"),
        }
    }
}

/// Most disks one VM may have (IRQs are the limit).
pub const MAX_DISKS: usize = 16;

/// One virtio-blk disk (JSON: `{"path": ..., "read_only": ..., "id": ...}`;
/// flag: `--disk PATH[,ro][,id=NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// A raw disk image file.
    pub path: PathBuf,
    /// The guest may not write to it. Default false.
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest sees (up to 20 bytes). Default none.
    #[serde(default)]
    pub id: Option<String>,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;
    /// `PATH[,ro][,id=NAME]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| ConfigError::Disk(s.into()))?;
        let mut disk = DiskConfig {
            path: PathBuf::from(path),
            read_only: false,
            id: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => disk.read_only = true,
                Some(("id", v)) if !v.is_empty() => disk.id = Some(v.to_string()),
                _ => return Err(ConfigError::Disk(s.into())),
            }
        }
        Ok(disk)
    }
}

/// Most network devices one VM may have.
pub const MAX_NETS: usize = 8;

/// An Ethernet MAC address; in JSON and on the command line
/// `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Mac(s.into());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        // A multicast address (low bit of the first byte) is not a NIC's.
        if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One virtio-net device: a tap by name (opened by hull-vmm, which needs
/// CAP_NET_ADMIN in the tap's network namespace) or an fd of a tap opened
/// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR that hull-vmm inherited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The guest's MAC address (a random one, chosen by the guest, without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;
    /// `tap=NAME[,mac=MAC]` or `fd=N[,mac=MAC]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Net(s.into());
        let mut net = NetConfig {
            tap: None,
            fd: None,
            mac: None,
        };
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", v)) if net.tap.is_none() && net.fd.is_none() => {
                    net.tap = Some(v.to_string())
                }
                Some(("fd", v)) if net.tap.is_none() && net.fd.is_none() => {
                    net.fd = Some(v.parse().map_err(|_| bad())?)
                }
                Some(("mac", v)) if net.mac.is_none() => net.mac = Some(v.parse()?),
                _ => return Err(bad()),
            }
        }
        net.validate().map_err(|_| bad())?;
        Ok(net)
    }
}

impl NetConfig {
    /// Exactly one of a valid tap name or a non-negative fd.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |n: &str| {
            (1..=15).contains(&n.len())
                && !n.contains('/')
                && !n.contains(',')
                && !n.chars().any(|c| c.is_whitespace() || c == '\0')
        };
        match (&self.tap, self.fd) {
            (Some(n), None) if name_ok(n) => Ok(()),
            (None, Some(fd)) if fd >= 0 => Ok(()),
            _ => Err(ConfigError::NetBackend),
        }
    }
}

/// Most shared directories one VM may have.
pub const MAX_FS: usize = 8;
/// Largest DAX window of one virtio-fs device, MiB.
pub const MAX_FS_DAX_MIB: u64 = 64 << 10;

/// The tag of virtio-fs slot `index` (fixed when the guest probes the
/// device: a share given to a slot at restore is mounted by it).
pub fn fs_slot_tag(index: usize) -> String {
    format!("hullfs{index}")
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// One virtio-fs device sharing a host directory (JSON: `{"tag": ...,
/// "path": ..., "read_only": ..., "cache": ...}`; flag:
/// `--fs tag=TAG,path=DIR[,ro][,cache=auto|never|always]`).
/// The guest mounts it with `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts it by: 1 to 36 bytes, no ',', '=' or space.
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    /// Every change is refused with EROFS on the host side. Default false.
    #[serde(default)]
    pub read_only: bool,
    /// Whether the guest keeps file data in its own page cache.
    #[serde(default)]
    pub cache: FsCache,
}

/// Whether a share's file data goes through the guest's page cache (the
/// server's answer to each OPEN and CREATE; names and attributes are
/// cached either way, for a second). See docs/volumes.md, "Caching".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsCache {
    /// The guest caches what it reads, and keeps it across opens until the
    /// host file's size or mtime changes; a file opened write-only (which
    /// can never be mapped) bypasses the cache: each write goes straight
    /// from the writer's buffer to the host file.
    #[default]
    Auto,
    /// No data in the guest's page cache: every read and write goes to the
    /// host file (FOPEN_DIRECT_IO), so the guest always sees the host's
    /// bytes and its memory holds no copy of them. A 6.1 guest kernel
    /// refuses MAP_SHARED of such a file (ENODEV); private mappings, and
    /// so executables, work.
    Never,
    /// Every file's data goes through the guest's page cache, write-only
    /// opens too (what `auto` was before it sent those direct): for a file
    /// that one process maps shared and writable while another writes it
    /// through a write-only open, whose direct write the mapping's later
    /// writeback could overwrite.
    Always,
}

impl std::str::FromStr for FsCache {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "auto" => Ok(FsCache::Auto),
            "never" => Ok(FsCache::Never),
            "always" => Ok(FsCache::Always),
            _ => Err(()),
        }
    }
}

impl std::str::FromStr for FsConfig {
    type Err = ConfigError;
    /// `tag=TAG,path=DIR[,ro][,cache=auto|never|always]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Fs(s.into());
        let (mut tag, mut path, mut read_only, mut cache) = (None, None, false, None);
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tag", v)) if tag.is_none() => tag = Some(v.to_string()),
                Some(("path", v)) if path.is_none() && !v.is_empty() => {
                    path = Some(PathBuf::from(v))
                }
                Some(("cache", v)) if cache.is_none() => {
                    cache = Some(v.parse().map_err(|()| bad())?)
                }
                None if opt == "ro" => read_only = true,
                _ => return Err(bad()),
            }
        }
        let (Some(tag), Some(path)) = (tag, path) else {
            return Err(bad());
        };
        let fs = FsConfig {
            tag,
            path,
            read_only,
            cache: cache.unwrap_or_default(),
        };
        fs.validate().map_err(|_| bad())?;
        Ok(fs)
    }
}

impl FsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if crate::devices::virtio::fs::device::valid_tag(&self.tag)
            && !self.path.as_os_str().is_empty()
        {
            Ok(())
        } else {
            Err(ConfigError::Fs(format!(
                "tag={},path={}",
                self.tag,
                self.path.display()
            )))
        }
    }
}

/// The vsock device and its host side (JSON: `{"cid": ..., "uds": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more (and below 2^32).
    pub cid: u64,
    /// Host connections arrive at this Unix socket; guest connections to
    /// host port P go to `UDS_P`.
    pub uds: PathBuf,
}

/// Where the guest's serial console goes. In JSON a string: `"stdout"`
/// (the default), `"none"`, or any other string as a file path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SerialOutput {
    #[default]
    Stdout,
    None,
    File(PathBuf),
}

impl TryFrom<String> for SerialOutput {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        match s.as_str() {
            "stdout" => Ok(SerialOutput::Stdout),
            "none" => Ok(SerialOutput::None),
            "" => Err(ConfigError::Serial(s)),
            _ => Ok(SerialOutput::File(PathBuf::from(s))),
        }
    }
}

impl From<SerialOutput> for String {
    fn from(s: SerialOutput) -> String {
        match s {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::None => "none".into(),
            SerialOutput::File(p) => p.display().to_string(),
        }
    }
}

fn default_vcpus() -> u32 {
    1
}
fn default_mem() -> u64 {
    128
}
fn default_huge_pages() -> bool {
    true
}

/// A VM's whole configuration, and the schema of hull-vmm's JSON
/// configuration (see the module documentation for an example). The field
/// names are a stable interface: callers such as `hull` write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux. Required.
    pub kernel: PathBuf,
    /// Initial ramdisk (a cpio archive). Default none.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Appended to [`DEFAULT_CMDLINE`]. Default empty.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`]. Default 1.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest memory in MiB, [`MIN_MEM_MIB`] to [`MAX_MEM_MIB`]. Default 128.
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    /// Where the serial console goes. Default `"stdout"`.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Print each boot-timer mark to stderr. Default false.
    #[serde(default)]
    pub boot_timer: bool,
    /// virtio-blk disks, at most [`MAX_DISKS`], in the order the guest
    /// sees them. Default none.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-blk devices in all: `disks` take the first ones, the others
    /// are empty (zero sectors) until a restore gives them a file. A
    /// template declares the slots its clones fill (see docs/snapshots.md).
    /// Default 0: exactly `disks`.
    #[serde(default)]
    pub disk_slots: usize,
    /// Attach a virtio-rng device. Default false.
    #[serde(default)]
    pub rng: bool,
    /// The vsock device. Default none.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-net devices, eth0 first.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// Shared host directories (virtio-fs), at most [`MAX_FS`]. Default
    /// none.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-fs devices in all, as `disk_slots` for disks: `fs` take the
    /// first ones (with the slots' tags, [`fs_slot_tag`]), the others are
    /// empty (every request refused) until a restore gives them a
    /// directory. Default 0: exactly `fs`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fs_slots: usize,
    /// Give every virtio-fs device (slots included) a DAX cache window of
    /// this many MiB, a multiple of 2 up to [`MAX_FS_DAX_MIB`] (see
    /// devices::virtio::fs::dax; guest-physical space, no host memory until
    /// the guest maps a file). Default 0: no window, the guest reads and
    /// writes through the request queue.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub fs_dax_mib: u64,
    /// Back guest RAM with transparent huge pages (see kvm::memory).
    /// Default true.
    #[serde(default = "default_huge_pages")]
    pub huge_pages: bool,
    /// Pause when the guest's agent says it is ready (its console line
    /// [`crate::snapshot::SNAPSHOT_LINE`]), write a snapshot to this
    /// directory and end. Default none.
    #[serde(default)]
    pub snapshot_at_ready: Option<PathBuf>,
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> Self {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: String::new(),
            vcpus: default_vcpus(),
            mem_mib: default_mem(),
            serial: SerialOutput::default(),
            boot_timer: false,
            disks: Vec::new(),
            disk_slots: 0,
            rng: false,
            vsock: None,
            nets: Vec::new(),
            fs: Vec::new(),
            fs_slots: 0,
            fs_dax_mib: 0,
            huge_pages: default_huge_pages(),
            snapshot_at_ready: None,
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let from = ConfigOrigin::File(path.to_path_buf());
        match std::fs::read(path) {
            Ok(data) => Self::from_json(&data, from),
            Err(source) => Err(ConfigError::Read { from, source }),
        }
    }

    /// Reads a JSON configuration from `fd` up to its end of file: a pipe
    /// whose write end the caller has closed, or a file (a memfd) read
    /// from its current offset. The fd is closed afterwards.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ConfigError> {
        let from = ConfigOrigin::Fd(fd.as_raw_fd());
        Self::from_reader(std::fs::File::from(fd), from)
    }

    /// Reads a JSON configuration from `r` up to its end; `from` names it
    /// in errors.
    pub fn from_reader(mut r: impl Read, from: ConfigOrigin) -> Result<Self, ConfigError> {
        let mut data = Vec::new();
        match r.read_to_end(&mut data) {
            Ok(_) => Self::from_json(&data, from),
            Err(source) => Err(ConfigError::Read { from, source }),
        }
    }

    fn from_json(data: &[u8], from: ConfigOrigin) -> Result<Self, ConfigError> {
        serde_json::from_slice(data).map_err(|source| ConfigError::Parse { from, source })
    }

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.vcpus == 0 || self.vcpus > u32::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Mem(self.mem_mib));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        if self.disk_slots > MAX_DISKS
            || (self.disk_slots > 0 && self.disks.len() > self.disk_slots)
        {
            return Err(ConfigError::DiskSlots {
                disks: self.disks.len(),
                slots: self.disk_slots,
            });
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u64::from(u32::MAX) {
                return Err(ConfigError::VsockCid(v.cid));
            }
        }
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        if self.fs.len() > MAX_FS {
            return Err(ConfigError::TooManyFs(self.fs.len()));
        }
        for (i, f) in self.fs.iter().enumerate() {
            f.validate()?;
            if self.fs[..i].iter().any(|g| g.tag == f.tag) {
                return Err(ConfigError::FsTagTwice(f.tag.clone()));
            }
        }
        if self.fs_slots > MAX_FS || (self.fs_slots > 0 && self.fs.len() > self.fs_slots) {
            return Err(ConfigError::FsSlots {
                shares: self.fs.len(),
                slots: self.fs_slots,
            });
        }
        if self.fs_slots > 0 {
            for (index, f) in self.fs.iter().enumerate() {
                let want = fs_slot_tag(index);
                if f.tag != want {
                    return Err(ConfigError::FsSlotTag {
                        index,
                        tag: f.tag.clone(),
                        want,
                    });
                }
            }
        }
        if self.fs_dax_mib > MAX_FS_DAX_MIB || !self.fs_dax_mib.is_multiple_of(2) {
            return Err(ConfigError::FsDax(self.fs_dax_mib));
        }
        // A template's fs slots are empty: no server state to lose.
        if !self.fs.is_empty() && self.snapshot_at_ready.is_some() {
            return Err(ConfigError::FsSnapshot);
        }
        for (i, n) in self.nets.iter().enumerate() {
            n.validate()?;
            if let Some(fd) = n.fd {
                if self.nets[..i].iter().any(|m| m.fd == Some(fd)) {
                    return Err(ConfigError::NetFdTwice(fd));
                }
            }
        }
        Ok(())
    }

    /// Number of virtio-blk devices: the disks, or the slots when more.
    pub fn block_devices(&self) -> usize {
        self.disks.len().max(self.disk_slots)
    }

    /// Number of virtio-fs devices: the shares, or the slots when more.
    pub fn fs_devices(&self) -> usize {
        self.fs.len().max(self.fs_slots)
    }

    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        if self.cmdline.trim().is_empty() {
            DEFAULT_CMDLINE.to_string()
        } else {
            format!("{DEFAULT_CMDLINE} {}", self.cmdline.trim())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_defaults() {
        let c: VmConfig = serde_json::from_str(r#"{"kernel": "/k", "serial": "none"}"#).unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_mib, 128);
        assert_eq!(c.serial, SerialOutput::None);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_ranges_are_rejected() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "cpus": 2}"#).is_err());
        let mut c = VmConfig::new("/k".into());
        c.vcpus = 33;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(33))));
        c.vcpus = 2;
        c.mem_mib = 8;
        assert!(matches!(c.validate(), Err(ConfigError::Mem(8))));
    }

    #[test]
    fn shared_directories_parse_and_are_checked() {
        let f: FsConfig = "tag=vol0,path=/srv/d,ro".parse().unwrap();
        assert_eq!(
            f,
            FsConfig {
                tag: "vol0".into(),
                path: "/srv/d".into(),
                read_only: true,
                cache: FsCache::Auto,
            }
        );
        let f2: FsConfig = "tag=vol0,path=/srv/d,cache=never".parse().unwrap();
        assert_eq!((f2.cache, f2.read_only), (FsCache::Never, false));
        let json: FsConfig = serde_json::from_str(r#"{"tag":"a","path":"/d"}"#).unwrap();
        assert_eq!(json.cache, FsCache::Auto);
        let json: FsConfig =
            serde_json::from_str(r#"{"tag":"a","path":"/d","cache":"never"}"#).unwrap();
        assert_eq!(json.cache, FsCache::Never);
        let f3: FsConfig = "tag=vol0,path=/srv/d,cache=always".parse().unwrap();
        assert_eq!(f3.cache, FsCache::Always);
        for bad in [
            "tag=vol0",
            "path=/d",
            "tag=a,path=/d,cache=sometimes",
            "tag=a,path=/d,cache=",
            "tag=a,path=/d,cache=never,cache=auto",
            "tag=,path=/d",
            "tag=a b,path=/d",
            &format!("tag={},path=/d", "x".repeat(37)),
            "tag=a,path=/d,rw",
        ] {
            assert!(bad.parse::<FsConfig>().is_err(), "{bad}");
        }
        let mut c = VmConfig::new("/k".into());
        c.fs = vec![f.clone(), f];
        assert!(matches!(c.validate(), Err(ConfigError::FsTagTwice(_))));
        c.fs.pop();
        c.validate().unwrap();
        c.snapshot_at_ready = Some("/snap".into());
        assert!(matches!(c.validate(), Err(ConfigError::FsSnapshot)));
    }

    #[test]
    fn cmdline_is_appended_to_the_defaults() {
        let mut c = VmConfig::new("/k".into());
        assert_eq!(c.full_cmdline(), DEFAULT_CMDLINE);
        c.cmdline = "init=/bin/sh".into();
        assert!(c.full_cmdline().starts_with(DEFAULT_CMDLINE));
        assert!(c.full_cmdline().ends_with(" init=/bin/sh"));
    }

    #[test]
    fn disk_specs() {
        let d: DiskConfig = "/a.img,ro,id=layer0".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("layer0"));
        let d: DiskConfig = "/b.img".parse().unwrap();
        assert!(!d.read_only && d.id.is_none());
        for bad in ["", ",ro", "/a,rw", "/a,id=", "/a,foo=1"] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad}");
        }
    }

    /// A configuration with every field away from its default.
    fn everything() -> VmConfig {
        VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd.cpio".into()),
            cmdline: "hull.debug=1".into(),
            vcpus: 4,
            mem_mib: 512,
            serial: SerialOutput::File("/run/x/serial.log".into()),
            boot_timer: true,
            disks: vec![
                "/l/0.erofs,ro,id=layer0".parse().unwrap(),
                "/l/scratch.img".parse().unwrap(),
            ],
            disk_slots: 4,
            rng: true,
            vsock: Some(VsockConfig {
                cid: 7,
                uds: "/run/x/vsock.sock".into(),
            }),
            nets: vec![
                "tap=tap0,mac=02:00:00:00:00:01".parse().unwrap(),
                "fd=5".parse().unwrap(),
            ],
            fs: vec!["tag=vol0,path=/srv/d,ro".parse().unwrap()],
            // Written only when set (fs_slots_hold_the_shares_by_tag).
            fs_slots: 0,
            fs_dax_mib: 1024,
            huge_pages: false,
            snapshot_at_ready: Some("/var/cache/t".into()),
        }
    }

    #[test]
    fn dax_windows_are_whole_2_mib_chunks_within_the_limit() {
        let mut c = VmConfig::new("/k".into());
        c.fs_dax_mib = 1024;
        c.validate().unwrap();
        for bad in [3, MAX_FS_DAX_MIB + 2] {
            c.fs_dax_mib = bad;
            assert!(
                matches!(c.validate(), Err(ConfigError::FsDax(b)) if b == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn fs_slots_hold_the_shares_by_tag() {
        let mut c = VmConfig::new("/k".into());
        c.fs_slots = 4;
        // A template: empty slots only, and it may be snapshotted.
        c.snapshot_at_ready = Some("/snap".into());
        c.validate().unwrap();
        assert_eq!(c.fs_devices(), 4);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
        // A restore: the shares fill the first slots, by the slots' tags.
        c.snapshot_at_ready = None;
        c.fs = vec![format!("tag={},path=/d", fs_slot_tag(0)).parse().unwrap()];
        c.validate().unwrap();
        c.fs[0].tag = "vol0".into();
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::FsSlotTag { index: 0, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "shared directory 0 has tag \"vol0\"; fs slot 0's tag is \"hullfs0\""
        );
        c.fs = (0..5)
            .map(|i| format!("tag={},path=/d", fs_slot_tag(i)).parse().unwrap())
            .collect();
        assert!(matches!(c.validate(), Err(ConfigError::FsSlots { .. })));
    }

    #[test]
    fn json_round_trips_every_field() {
        let c = everything();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), c);
        // The field names are the interface callers write.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "boot_timer",
                "cmdline",
                "disk_slots",
                "disks",
                "fs",
                "fs_dax_mib",
                "huge_pages",
                "initrd",
                "kernel",
                "mem_mib",
                "nets",
                "rng",
                "serial",
                "snapshot_at_ready",
                "vcpus",
                "vsock"
            ]
        );
        assert_eq!(v["disks"][0]["read_only"], true);
        assert_eq!(v["serial"], "/run/x/serial.log");
        assert_eq!(v["nets"][0]["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn the_documented_example_parses() {
        let c: VmConfig = serde_json::from_str(
            r#"{
              "kernel": "/path/to/vmlinux",
              "initrd": "/path/to/initrd.cpio",
              "cmdline": "hull.debug=1",
              "vcpus": 2,
              "mem_mib": 256,
              "serial": "none",
              "boot_timer": false,
              "disks": [{ "path": "/path/to/layer0.erofs", "read_only": true, "id": "layer0" }],
              "rng": true,
              "vsock": { "cid": 3, "uds": "/path/to/vsock.sock" },
              "nets": [{ "tap": "tap0", "mac": "02:00:00:00:00:01" }],
              "huge_pages": true
            }"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            (c.vcpus, c.mem_mib, c.disks.len(), c.nets.len()),
            (2, 256, 1, 1)
        );
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for bad in [
            r#"{"kernel": "/k", "disks": [{"path": "/d", "ro": true}]}"#,
            r#"{"kernel": "/k", "vsock": {"cid": 3, "uds": "/u", "port": 1}}"#,
        ] {
            assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_fd_reads_a_pipe_to_its_end() {
        let (rd, wr) = std::io::pipe().unwrap();
        let json = serde_json::to_vec(&everything()).unwrap();
        let writer = std::thread::spawn(move || {
            let mut wr = wr;
            std::io::Write::write_all(&mut wr, &json).unwrap();
        });
        let c = VmConfig::from_fd(OwnedFd::from(rd)).unwrap();
        writer.join().unwrap();
        assert_eq!(c, everything());
    }

    #[test]
    fn a_bad_config_names_where_it_came_from_and_its_cause_once() {
        let (rd, mut wr) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut wr, br#"{"kernel": "/k", "cpus": 2}"#).unwrap();
        drop(wr);
        let e = VmConfig::from_fd(OwnedFd::from(rd)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("the configuration in fd "), "{msg}");
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("unknown field `cpus`"), "{cause}");
        assert!(!msg.contains(&cause), "{msg} repeats {cause}");

        let e = VmConfig::from_file(Path::new("/nonexistent/vm.json")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading the configuration from /nonexistent/vm.json"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn net_specs() {
        let n: NetConfig = "tap=tap0,mac=02:00:0a:4d:00:02".parse().unwrap();
        assert_eq!(n.tap.as_deref(), Some("tap0"));
        assert_eq!(n.mac, Some(MacAddr([2, 0, 0x0a, 0x4d, 0, 2])));
        assert_eq!(n.mac.unwrap().to_string(), "02:00:0a:4d:00:02");
        let n: NetConfig = "fd=3".parse().unwrap();
        assert_eq!((n.fd, n.tap, n.mac), (Some(3), None, None));
        for bad in [
            "",
            "tap=",
            "tap=a-name-of-16-byte",
            "tap=a/b",
            "fd=-1",
            "fd=x",
            "tap=t,fd=3",
            "tap=t,mac=01:00:00:00:00:01",
            "tap=t,mac=00:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:01:02",
            "tap=t,mac=2:0:0:0:0:1",
            "tap=t,speed=10",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_in_json() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "nets": [{"tap": "tap0", "mac": "02:00:00:00:00:01"}, {"fd": 5}]}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.nets.len(), 2);
        assert_eq!(c.nets[1].fd, Some(5));
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        for bad in [
            r#"{"kernel": "/k", "nets": [{"tap": "t", "queues": 2}]}"#,
            r#"{"kernel": "/k", "nets": [{"tap": "t", "mac": "ff:ff:ff:ff:ff:ff"}]}"#,
        ] {
            assert!(serde_json::from_str::<VmConfig>(bad).is_err(), "{bad}");
        }
        let mut c = VmConfig::new("/k".into());
        c.nets = vec!["fd=4".parse().unwrap(), "fd=4".parse().unwrap()];
        assert!(matches!(c.validate(), Err(ConfigError::NetFdTwice(4))));
        c.nets = vec![NetConfig {
            tap: Some("t".into()),
            fd: Some(4),
            mac: None,
        }];
        assert!(matches!(c.validate(), Err(ConfigError::NetBackend)));
        c.nets = vec!["tap=t".parse().unwrap(); MAX_NETS + 1];
        assert!(matches!(c.validate(), Err(ConfigError::TooManyNets(_))));
    }

    #[test]
    fn disk_slots_hold_the_disks() {
        let mut c = VmConfig::new("/k".into());
        c.disks = vec!["/a".parse().unwrap(); 3];
        assert_eq!(c.block_devices(), 3);
        c.disk_slots = 16;
        c.validate().unwrap();
        assert_eq!(c.block_devices(), 16);
        c.disk_slots = 2;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DiskSlots { disks: 3, slots: 2 })
        ));
        c.disk_slots = MAX_DISKS + 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn serial_round_trips() {
        for s in ["stdout", "none", "/tmp/x"] {
            let v = SerialOutput::try_from(s.to_string()).unwrap();
            assert_eq!(String::from(v), s);
        }
    }
}
