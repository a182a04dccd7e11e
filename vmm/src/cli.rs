//! hull-vmm's command line: a small parser of its own, no argument
//! framework. hull-vmm starts once per microVM, cold or restored, and
//! parsing is on that path: clap's derive parser took 0.1-1 ms of a native
//! start and 50-500 ms in the emulated KVM host (much of it first touches
//! of its code and data), where a restore from main() to a running guest
//! takes 100-300 ms in all. Firecracker keeps its own small parser for the
//! same reason.
//!
//! Flags take their value as the next argument or after `=`
//! (`--mem 128`, `--mem=128`); repeatable ones collect every value.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use hull_vmm::config::{ConfigError, DiskConfig, FsConfig, NetConfig};

/// Everything the command line can say; unset flags are None, empty or false.
#[derive(Debug, Default)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub config_fd: Option<i32>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u32>,
    pub mem: Option<u64>,
    pub serial: Option<String>,
    pub boot_timer: bool,
    pub disks: Vec<DiskConfig>,
    pub disk_slots: Option<usize>,
    pub nets: Vec<NetConfig>,
    pub fs: Vec<FsConfig>,
    pub fs_dax: Option<u64>,
    pub rng: bool,
    pub no_huge_pages: bool,
    pub vsock_cid: Option<u64>,
    pub vsock_uds: Option<PathBuf>,
    pub snapshot_at_ready: Option<PathBuf>,
    pub restore: Option<PathBuf>,
    pub no_seccomp: bool,
    pub jail: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cgroup_procs: Vec<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Args>),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("unknown flag {0} (hull-vmm --help lists them)")]
    Unknown(String),
    #[error("unexpected argument {0:?} (hull-vmm takes only flags)")]
    Positional(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} takes no value")]
    UnwantedValue(&'static str),
    #[error("{flag} {value}: {why}")]
    BadValue {
        flag: &'static str,
        value: String,
        why: String,
    },
    /// A --disk, --net or --fs value (its message names flag and value).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} cannot be used with {1}")]
    Conflict(&'static str, &'static str),
    #[error("{0} needs {1} too")]
    Requires(&'static str, &'static str),
}

pub const HELP: &str = "\
Boot a Linux guest (an uncompressed ELF vmlinux) in a KVM microVM.

Usage: hull-vmm [FLAGS]

Exit status: 0 when the guest reboots (how a hull guest ends), 1 for a bad
command line, configuration or host problem, 2 when the guest fails (triple
fault, KVM error), 3 when the guest kernel panics, 4 when a snapshot given to
--restore is refused (another version, kernel, agent, CPU model, vCPU count or
memory size, truncated or corrupted); nothing was restored.

Flags:
  --config FILE          JSON file holding a whole VmConfig (kernel, initrd,
                         cmdline, vcpus, mem_mib, serial, boot_timer, disks, rng,
                         vsock, nets, fs, huge_pages; see hull_vmm::config);
                         flags given too override it
  --config-fd N          as --config, read from inherited file descriptor N up
                         to its end (a pipe whose write end the caller closed,
                         or a memfd); hull-vmm closes it after reading
  --kernel PATH          uncompressed ELF vmlinux
  --initrd PATH          initial ramdisk (cpio)
  --cmdline STR          appended to hull's default kernel command line
  --vcpus N              number of vCPUs (1-32)
  --mem MIB              guest memory in MiB
  --serial stdout|none|FILE
                         where the serial console goes
  --boot-timer           print each boot-timer mark the guest writes to stderr
  --disk PATH[,ro][,id=NAME]
                         a virtio-blk disk backed by a raw file; repeatable (up
                         to 16)
  --disk-slots N         virtio-blk devices in all: the --disk ones first, then
                         empty slots (zero sectors) that a restore fills
  --net tap=NAME|fd=N[,mac=MAC]
                         a virtio-net device on a tap, by name (opened here:
                         needs CAP_NET_ADMIN where the tap lives) or an
                         inherited fd of a tap opened with
                         IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; the guest sees MAC if
                         given; repeatable: eth0, eth1, ...
  --fs tag=TAG,path=DIR[,ro][,cache=auto|never|always]
                         a host directory shared over virtio-fs (the guest
                         mounts it with `mount -t virtiofs TAG DIR`); `ro` is
                         enforced by hull-vmm; cache=never keeps file data
                         out of the guest's page cache (every read and write
                         goes to the host file; no MAP_SHARED); the default,
                         auto, caches it except through write-only opens;
                         always caches it through every open;
                         repeatable (up to 8)
  --fs-dax MIB           give each virtio-fs device a DAX cache window of MIB
                         (a multiple of 2): the guest mounts with -o dax and
                         reads and writes host files in place
  --rng                  attach a virtio-rng device (the guest's /dev/hwrng)
  --no-huge-pages        back guest RAM with 4 KiB pages only (by default it is
                         laid out for and advised to use transparent huge pages)
  --vsock-cid N          the guest's vsock CID (3 or more); needs --vsock-uds
  --vsock-uds PATH       host side of the vsock device: connect here and write
                         \"CONNECT <port>\\n\" to reach a guest listener; guest
                         connections to host port P go to PATH_P
  --snapshot-at-ready DIR
                         pause when the guest's agent is ready (its console line
                         \"hull-agent: ready\"), write a snapshot of the whole VM
                         to DIR and exit 0 (this run takes no seccomp filters)
  --restore DIR          start from the snapshot in DIR instead of booting; the
                         devices must be those of the snapshotted VM (their host
                         side may differ); --kernel, --initrd, --vcpus and --mem,
                         when given, are checked against the snapshot; with
                         --jail its files are opened before the jail
  --no-seccomp           run without the per-thread seccomp filters (debugging
                         only)
  --jail DIR             jail the VMM before it opens /dev/kvm (see
                         hull_vmm::jail): DIR/root becomes its root, DIR/vmm.pid
                         gets its pid; needs --uid and --gid
  --uid UID              the unprivileged user the jailed VMM runs as
  --gid GID              the unprivileged group the jailed VMM runs as
  --cgroup-procs FILE    a cgroup.procs file the jailed VMM joins first;
                         repeatable (one per cgroup v1 hierarchy)
  -h, --help             print this help
  -V, --version          print the version
";

/// Parses the number `value` for `flag`.
fn parse<T>(flag: &'static str, value: String) -> Result<T, CliError>
where
    T: FromStr<Err = std::num::ParseIntError>,
{
    value.parse().map_err(|e: T::Err| CliError::BadValue {
        flag,
        why: e.to_string(),
        value,
    })
}

/// Sets a flag that may be given once: a second value replaces the first,
/// as clap did.
fn set<T>(slot: &mut Option<T>, value: T) {
    *slot = Some(value);
}

/// Parses the arguments after the program name.
pub fn parse_args<I>(args: I) -> Result<Parsed, CliError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut a = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let arg = arg
            .into_string()
            .map_err(|s| CliError::Positional(s.to_string_lossy().into_owned()))?;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let flag = flag_name(&name).ok_or_else(|| {
            if name.starts_with('-') {
                CliError::Unknown(name.clone())
            } else {
                CliError::Positional(arg.clone())
            }
        })?;
        if let Some(done) = switch(flag, &mut a) {
            if inline.is_some() {
                return Err(CliError::UnwantedValue(flag));
            }
            if let Some(p) = done {
                return Ok(p);
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or(CliError::MissingValue(flag))?
                .into_string()
                .map_err(|s| CliError::BadValue {
                    flag,
                    value: s.to_string_lossy().into_owned(),
                    why: "not UTF-8".into(),
                })?,
        };
        take_value(flag, value, &mut a)?;
    }
    check(&a)?;
    Ok(Parsed::Run(Box::new(a)))
}

/// Every flag hull-vmm knows, as written on the command line.
const FLAGS: &[&str] = &[
    "--config",
    "--config-fd",
    "--kernel",
    "--initrd",
    "--cmdline",
    "--vcpus",
    "--mem",
    "--serial",
    "--boot-timer",
    "--disk",
    "--disk-slots",
    "--net",
    "--fs",
    "--fs-dax",
    "--rng",
    "--no-huge-pages",
    "--vsock-cid",
    "--vsock-uds",
    "--snapshot-at-ready",
    "--restore",
    "--no-seccomp",
    "--jail",
    "--uid",
    "--gid",
    "--cgroup-procs",
    "--help",
    "--version",
];

/// The flag `name` stands for (`-h` and `-V` are `--help`, `--version`).
fn flag_name(name: &str) -> Option<&'static str> {
    match name {
        "-h" => Some("--help"),
        "-V" => Some("--version"),
        _ => FLAGS.iter().copied().find(|f| *f == name),
    }
}

/// Applies a flag that takes no value: Some(None) when it was one,
/// Some(Some(..)) when it ends parsing (help, version), None when the flag
/// takes a value.
fn switch(flag: &'static str, a: &mut Args) -> Option<Option<Parsed>> {
    let on = match flag {
        "--help" => return Some(Some(Parsed::Help)),
        "--version" => return Some(Some(Parsed::Version)),
        "--boot-timer" => &mut a.boot_timer,
        "--rng" => &mut a.rng,
        "--no-huge-pages" => &mut a.no_huge_pages,
        "--no-seccomp" => &mut a.no_seccomp,
        _ => return None,
    };
    *on = true;
    Some(None)
}

fn take_value(flag: &'static str, v: String, a: &mut Args) -> Result<(), CliError> {
    match flag {
        "--config" => set(&mut a.config, v.into()),
        "--config-fd" => set(&mut a.config_fd, parse(flag, v)?),
        "--kernel" => set(&mut a.kernel, v.into()),
        "--initrd" => set(&mut a.initrd, v.into()),
        "--cmdline" => set(&mut a.cmdline, v),
        "--vcpus" => set(&mut a.vcpus, parse(flag, v)?),
        "--mem" => set(&mut a.mem, parse(flag, v)?),
        "--serial" => set(&mut a.serial, v),
        "--disk" => a.disks.push(v.parse()?),
        "--disk-slots" => set(&mut a.disk_slots, parse(flag, v)?),
        "--net" => a.nets.push(v.parse()?),
        "--fs" => a.fs.push(v.parse()?),
        "--fs-dax" => set(&mut a.fs_dax, parse(flag, v)?),
        "--vsock-cid" => set(&mut a.vsock_cid, parse(flag, v)?),
        "--vsock-uds" => set(&mut a.vsock_uds, v.into()),
        "--snapshot-at-ready" => set(&mut a.snapshot_at_ready, v.into()),
        "--restore" => set(&mut a.restore, v.into()),
        "--jail" => set(&mut a.jail, v.into()),
        "--uid" => set(&mut a.uid, parse(flag, v)?),
        "--gid" => set(&mut a.gid, parse(flag, v)?),
        "--cgroup-procs" => a.cgroup_procs.push(v.into()),
        // flag_name only returns FLAGS, and switch took the rest.
        _ => return Err(CliError::Unknown(flag.into())),
    }
    Ok(())
}

/// The flags' combinations: what conflicts and what needs what.
fn check(a: &Args) -> Result<(), CliError> {
    let conflicts = [
        (
            a.config.is_some(),
            "--config",
            a.config_fd.is_some(),
            "--config-fd",
        ),
        (
            a.snapshot_at_ready.is_some(),
            "--snapshot-at-ready",
            a.restore.is_some(),
            "--restore",
        ),
        (
            a.snapshot_at_ready.is_some(),
            "--snapshot-at-ready",
            a.jail.is_some(),
            "--jail",
        ),
    ];
    for (x, xn, y, yn) in conflicts {
        if x && y {
            return Err(CliError::Conflict(xn, yn));
        }
    }
    let jail = a.jail.is_some();
    let needs = [
        (
            a.vsock_cid.is_some(),
            "--vsock-cid",
            a.vsock_uds.is_some(),
            "--vsock-uds",
        ),
        (
            a.vsock_uds.is_some(),
            "--vsock-uds",
            a.vsock_cid.is_some(),
            "--vsock-cid",
        ),
        (jail, "--jail", a.uid.is_some(), "--uid"),
        (jail, "--jail", a.gid.is_some(), "--gid"),
        (a.uid.is_some(), "--uid", jail, "--jail"),
        (a.gid.is_some(), "--gid", jail, "--jail"),
        (!a.cgroup_procs.is_empty(), "--cgroup-procs", jail, "--jail"),
    ];
    for (given, name, other, other_name) in needs {
        if given && !other {
            return Err(CliError::Requires(name, other_name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, CliError> {
        match parse_args(args.iter().map(OsString::from))? {
            Parsed::Run(a) => Ok(*a),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn values_follow_their_flag_or_an_equals_sign() {
        let a = run(&[
            "--kernel",
            "/k",
            "--mem=256",
            "--vcpus",
            "2",
            "--disk",
            "/d1,ro",
            "--disk=/d2,id=x",
            "--rng",
            "--restore",
            "/snap",
            "--cmdline",
            "a=b c",
        ])
        .unwrap();
        assert_eq!(a.kernel, Some("/k".into()));
        assert_eq!((a.mem, a.vcpus), (Some(256), Some(2)));
        assert_eq!(a.disks.len(), 2);
        assert!(a.disks[0].read_only);
        assert_eq!(a.disks[1].id.as_deref(), Some("x"));
        assert!(a.rng && !a.boot_timer);
        assert_eq!(a.restore, Some("/snap".into()));
        assert_eq!(a.cmdline.as_deref(), Some("a=b c"));
    }

    #[test]
    fn help_and_version_end_parsing() {
        for (args, want) in [
            (&["-h"][..], "help"),
            (&["--mem", "1", "--version"][..], "version"),
        ] {
            let p = parse_args(args.iter().map(OsString::from)).unwrap();
            assert_eq!(format!("{p:?}").to_lowercase(), want, "{args:?}");
        }
        assert!(HELP.contains("--snapshot-at-ready DIR"));
        for flag in FLAGS {
            assert!(HELP.contains(flag), "{flag} is not in the help");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let cases: &[(&[&str], CliError)] = &[
            (&["--memory", "1"], CliError::Unknown("--memory".into())),
            (&["vmlinux"], CliError::Positional("vmlinux".into())),
            (&["--kernel"], CliError::MissingValue("--kernel")),
            (&["--rng=yes"], CliError::UnwantedValue("--rng")),
            (&["--restore", "/s", "--snapshot-at-ready", "/t"], {
                CliError::Conflict("--snapshot-at-ready", "--restore")
            }),
            (
                &["--vsock-cid", "3"],
                CliError::Requires("--vsock-cid", "--vsock-uds"),
            ),
            (
                &["--jail", "/j", "--uid", "1"],
                CliError::Requires("--jail", "--gid"),
            ),
            (&["--uid", "1"], CliError::Requires("--uid", "--jail")),
        ];
        for (args, want) in cases {
            assert_eq!(
                run(args).unwrap_err().to_string(),
                want.to_string(),
                "{args:?}"
            );
        }
        let e = run(&["--vcpus", "two"]).unwrap_err();
        assert!(
            matches!(&e, CliError::BadValue { flag: "--vcpus", value, .. } if value == "two"),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("--vcpus two: "), "{e}");
        let e = run(&["--disk", ",ro"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--disk \",ro\": expected PATH[,ro][,id=NAME]"
        );
    }
}
