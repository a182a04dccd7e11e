//! What a VM is made of: from `hull-vmm`'s flags or a JSON file with the same
//! fields (`--config FILE`; flags given as well override the file).

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
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("--serial {0:?}: expected stdout, none or a file path")]
    Serial(String),
    #[error("--disk {0:?}: expected PATH[,ro][,id=NAME]")]
    Disk(String),
    #[error("{0} disks: at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("--vsock-cid {0}: guest CIDs start at 3")]
    VsockCid(u64),
}

/// Most disks one VM may have (IRQs are the limit).
pub const MAX_DISKS: usize = 16;

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest sees (up to 20 bytes).
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

/// The vsock device and its host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: u64,
    /// Host connections arrive at this Unix socket; guest connections to
    /// host port P go to `UDS_P`.
    pub uds: PathBuf,
}

/// Where the guest's serial console goes.
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

/// A VM's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Appended to [`DEFAULT_CMDLINE`].
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    #[serde(default)]
    pub serial: SerialOutput,
    /// Print each boot-timer mark to stderr.
    #[serde(default)]
    pub boot_timer: bool,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng device.
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Back guest RAM with transparent huge pages (see kvm::memory).
    #[serde(default = "default_huge_pages")]
    pub huge_pages: bool,
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
            rng: false,
            vsock: None,
            huge_pages: default_huge_pages(),
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let data = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
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
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u64::from(u32::MAX) {
                return Err(ConfigError::VsockCid(v.cid));
            }
        }
        Ok(())
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

    #[test]
    fn serial_round_trips() {
        for s in ["stdout", "none", "/tmp/x"] {
            let v = SerialOutput::try_from(s.to_string()).unwrap();
            assert_eq!(String::from(v), s);
        }
    }
}
