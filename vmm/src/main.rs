//! `hull-vmm`: runs one microVM (flags: `hull-vmm --help`, src/cli.rs).

#![warn(clippy::cast_possible_truncation)]

mod cli;
mod logger;

use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use anyhow::{Context, bail};
use hull_vmm::config::{ConfigOrigin, SerialOutput, VmConfig, VsockConfig};
use hull_vmm::jail::JailConfig;
use hull_vmm::seccomp;
use hull_vmm::snapshot::{Expected, Snapshot};
use hull_vmm::vmm::{Vmm, VmmError};

/// The jailed VMM in its jail (its waiting parent never returns from
/// `enter`: it ends as the VMM did, with its code or by the same signal).
fn jail(cfg: VmConfig, jail: &JailConfig) -> anyhow::Result<VmConfig> {
    Ok(hull_vmm::jail::enter(cfg, jail)?)
}

/// Test aid (documented in the README): `main`, `vcpu` or `device` makes
/// that thread issue a forbidden system call as soon as its filter is in.
const TEST_FORBIDDEN_ENV: &str = "HULL_VMM_TEST_FORBIDDEN_SYSCALL";

/// Turns on the per-thread seccomp filters, or says loudly that they are off.
/// A run that takes a snapshot has none: its vCPUs save their state with
/// KVM_GET_* ioctls and the main thread writes the snapshot files, none of
/// which the filters allow; it exits once saved. A restored VM's filters go
/// in after every KVM_SET_* of the restore.
fn seccomp(off: bool, taking_snapshot: bool) -> anyhow::Result<()> {
    if taking_snapshot {
        log::info!("--snapshot-at-ready: no seccomp filters for this run");
        return Ok(());
    }
    if off {
        eprintln!(
            "hull-vmm warning: --no-seccomp: this VMM runs WITHOUT seccomp filters; use it only to debug"
        );
        return Ok(());
    }
    let mut filters = seccomp::Filters::default();
    if let Some(v) = std::env::var_os(TEST_FORBIDDEN_ENV) {
        let name = v.to_string_lossy();
        filters.test_forbidden =
            Some(seccomp::ThreadKind::from_name(&name).with_context(|| {
                format!("{TEST_FORBIDDEN_ENV}={name}: expected main, vcpu or device")
            })?);
    }
    seccomp::enable(filters)?;
    Ok(())
}

/// Takes ownership of the inherited descriptor `fd`, after checking that
/// it is open. Standard input, output and error stay open (a copy is
/// returned): closing one would let a later open take its number.
fn inherited_fd(fd: RawFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any int is allowed.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if fd < 0 || !open {
        bail!("--config-fd {fd}: no such open file descriptor");
    }
    if fd <= 2 {
        // SAFETY: `fd` is open (checked above) and, as a standard stream,
        // stays open for the whole process; the borrow ends at once.
        let stdio = unsafe { BorrowedFd::borrow_raw(fd) };
        return stdio
            .try_clone_to_owned()
            .with_context(|| format!("--config-fd {fd}: duplicating it"));
    }
    // SAFETY: `fd` is open (checked above) and nothing else in this process
    // owns it: it was inherited for this purpose and is named only by the
    // --config-fd flag; the OwnedFd closes it once the config is read.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a restore checks the snapshot against: what the arguments name.
fn expected(named: bool, vcpus: Option<u32>, mem: Option<u64>, cfg: &VmConfig) -> Expected {
    Expected {
        kernel: (!cfg.kernel.as_os_str().is_empty()).then(|| cfg.kernel.clone()),
        initrd: cfg.initrd.clone(),
        vcpus: (named || vcpus.is_some()).then_some(cfg.vcpus),
        mem_mib: (named || mem.is_some()).then_some(cfg.mem_mib),
    }
}

fn config(args: cli::Args) -> anyhow::Result<VmConfig> {
    let mut cfg = match (&args.config, args.config_fd) {
        (Some(path), _) => VmConfig::from_file(path)?,
        (None, Some(fd)) => {
            VmConfig::from_reader(File::from(inherited_fd(fd)?), ConfigOrigin::Fd(fd))?
        }
        (None, None) => VmConfig::new(args.kernel.clone().unwrap_or_default()),
    };
    if let Some(k) = args.kernel {
        cfg.kernel = k;
    }
    if args.initrd.is_some() {
        cfg.initrd = args.initrd;
    }
    if let Some(c) = args.cmdline {
        cfg.cmdline = c;
    }
    if let Some(n) = args.vcpus {
        cfg.vcpus = n;
    }
    if let Some(m) = args.mem {
        cfg.mem_mib = m;
    }
    if let Some(s) = args.serial {
        cfg.serial = SerialOutput::try_from(s)?;
    }
    cfg.boot_timer |= args.boot_timer;
    cfg.disks.extend(args.disks);
    if let Some(n) = args.disk_slots {
        cfg.disk_slots = n;
    }
    cfg.nets.extend(args.nets);
    cfg.fs.extend(args.fs);
    if let Some(m) = args.fs_dax {
        cfg.fs_dax_mib = m;
    }
    cfg.rng |= args.rng;
    cfg.huge_pages &= !args.no_huge_pages;
    if let (Some(cid), Some(uds)) = (args.vsock_cid, args.vsock_uds) {
        cfg.vsock = Some(VsockConfig { cid, uds });
    }
    if args.snapshot_at_ready.is_some() {
        cfg.snapshot_at_ready = args.snapshot_at_ready;
    }
    Ok(cfg)
}

/// An error and its causes on one line, "what failed: why: why". A cause
/// whose text the line already ends with is left out: hull-vmm's own errors
/// never repeat their cause, but some it wraps (from rust-vmm crates) print
/// their cause and return it as their source too.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Says what failed on one line and exits with `code`.
fn fail(e: &(dyn std::error::Error + 'static), code: i32) -> ! {
    eprintln!("hull-vmm: {}", one_line(e));
    std::process::exit(code)
}

fn main() {
    let start = Instant::now();
    logger::init(start);
    let args = match cli::parse_args(std::env::args_os().skip(1)) {
        Ok(cli::Parsed::Run(args)) => *args,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::HELP);
            std::process::exit(0);
        }
        Ok(cli::Parsed::Version) => {
            println!("hull-vmm {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Err(e) => fail(&e, 1),
    };
    log::debug!("arguments parsed");
    let restore = args.restore.clone();
    let (named_vcpus, named_mem) = (args.vcpus, args.mem);
    let named_config = args.config.is_some() || args.config_fd.is_some();
    let no_seccomp = args.no_seccomp;
    let jail_config = match (&args.jail, args.uid, args.gid) {
        (Some(dir), Some(uid), Some(gid)) => Some(JailConfig {
            dir: dir.clone(),
            uid,
            gid,
            cgroup_procs: args.cgroup_procs.clone(),
        }),
        _ => None,
    };
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => fail(e.as_ref(), 1),
    };
    // From the flag or the JSON configuration alike.
    let taking_snapshot = cfg.snapshot_at_ready.is_some();
    // The snapshot is opened and checked where its files are, before the
    // jail (whose root holds only the VM's own files): the restore maps
    // memory from the descriptor it keeps.
    let snapshot = restore.as_ref().map(|dir| {
        let expected = expected(named_config, named_vcpus, named_mem, &cfg);
        Snapshot::open(dir, &expected).map_err(VmmError::from)
    });
    let snapshot = match snapshot {
        Some(Err(e)) => fail(&e, e.exit_code()),
        Some(Ok(s)) => Some(s),
        None => None,
    };
    log::debug!("snapshot opened (if any) at {:?}", start.elapsed());
    let setup = match &jail_config {
        Some(j) => jail(cfg, j),
        None => Ok(cfg),
    };
    let cfg = match setup.and_then(|cfg| seccomp(no_seccomp, taking_snapshot).map(|()| cfg)) {
        Ok(c) => c,
        Err(e) => fail(e.as_ref(), 1),
    };
    log::debug!(
        "configured, seccomp filters enabled at {:?}",
        start.elapsed()
    );
    let vmm = match snapshot {
        Some(snap) => Vmm::restore(cfg, snap, start),
        None => Vmm::build_since(cfg, start),
    };
    match vmm.and_then(Vmm::run) {
        Ok(outcome) => {
            if let Some(dir) = &outcome.snapshot {
                eprintln!(
                    "hull-vmm: snapshot written to {} after {:?}",
                    dir.display(),
                    start.elapsed()
                );
            }
            log::info!(
                "guest rebooted after {:?}; boot-timer marks: {:?}",
                start.elapsed(),
                outcome.boot_marks
            );
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("hull-vmm: {}", one_line(&e));
            std::process::exit(e.exit_code());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Leaf {
        #[error("disk /d: {0}")]
        Both(#[source] std::io::Error),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("setting up a disk")]
    struct Outer(#[source] Leaf);

    #[test]
    fn the_chain_is_one_line_with_each_cause_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Outer(Leaf::Both(io()));
        assert_eq!(
            one_line(&e),
            "setting up a disk: disk /d: No such file or directory (os error 2)"
        );
        let e = hull_vmm::config::VmConfig::from_file("/nonexistent/vm.json".as_ref()).unwrap_err();
        assert_eq!(
            one_line(&e),
            "reading the configuration from /nonexistent/vm.json: No such file or directory (os error 2)"
        );
    }
}
