//! The jail `hull-vmm --jail DIR --uid U --gid G` enters before it opens
//! /dev/kvm's VM (DESIGN.md, "The VMM's jail"). In order, each step and
//! what it protects:
//! 1. joins the cgroups it is given (`--cgroup-procs`): memory, pids and
//!    CPU are bounded for everything the VMM does;
//! 2. new mount, pid, ipc, uts and network namespaces: the VMM sees no
//!    other process, no host network, no host IPC;
//! 3. forks: the child is PID 1 of the new pid namespace and runs the VM
//!    (it dies with the parent: SIGKILL as its parent-death signal);
//!    the parent, the waiter, writes the child's pid to `DIR/vmm.pid`,
//!    then gives up everything it had: its files (0-2 kept), its root
//!    (the same uid/gid as the VMM, no groups, no capabilities in any set,
//!    `no_new_privs`, no core dumps) and all but ten system calls (its own
//!    seccomp filter, crate::seccomp::waiter_rules: wait, signals, exit);
//!    it shares the VMM's mount namespace, so after the pivot it sees only
//!    the jail too. It then waits and ends as the child did (the caller
//!    sees the VMM's own status, a SIGSYS included). It runs outside the
//!    VMM's pid namespace, so the VMM cannot signal or trace it;
//! 4. a fresh tmpfs on `DIR/root` holding only the kernel, the initrd and
//!    the disks (bind-mounted, read-only unless a disk is writable), its own
//!    /dev/kvm and /dev/urandom nodes, and the run directory (the vsock
//!    socket and the console file, which the host reaches from outside);
//!    `pivot_root` into it, the old root detached: no other host file is
//!    reachable;
//! 5. rlimits: open files, file size (the console cannot fill the disk;
//!    SIGXFSZ is ignored, so a write past it fails instead of killing the
//!    VMM) and no core dumps (guest memory never lands on disk);
//! 6. drops to the unprivileged `U:G` with no supplementary groups, every
//!    capability gone (bounding and ambient sets too) and `no_new_privs`.
//!
//! With shared directories (`fs`), each is bind-mounted at `/fsN` (read-only
//! for a read-only share), a /proc/self/fd directory is opened from a proc
//! mounted for the moment (the FUSE server reopens its O_PATH fds through
//! it; the mount is detached before the pivot, so the jail has no /proc),
//! the open-files limit covers the servers' tables, the file-size limit is
//! lifted for a writable share (the guest may fill it as it may fill any
//! writable share; the limit would only cut its files at 64 MiB), and four
//! capabilities
//! stay, effective, in the jail: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER
//! and CAP_FSETID. With them the server writes the share as the host's
//! owners and modes require and gives what the guest creates the guest's
//! ids, as an unjailed hull-vmm running as root does; they reach only what
//! is mounted in the jail (the shares, the run directory; the kernel and
//! read-only disks are read-only mounts). CAP_DAC_READ_SEARCH (which would
//! allow open_by_handle_at) and CAP_MKNOD are not kept.
//!
//! The seccomp filters (crate::seccomp) come after, per thread.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{SerialOutput, VmConfig};

/// Where and as whom the VMM is jailed.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The per-VM directory: `root/` becomes the VMM's `/`, `vmm.pid` gets
    /// the VMM's pid.
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `cgroup.procs` files of the VMM's own cgroup(s), joined first.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Open files a jailed VMM may have (disks, eventfds, sockets).
const MAX_OPEN_FILES: u64 = 1024;
/// Open files each shared directory's FUSE server may add.
const FS_OPEN_FILES: u64 = (crate::devices::virtio::fs::server::MAX_INODES
    + crate::devices::virtio::fs::server::MAX_HANDLES) as u64;
/// Capabilities a jailed VMM serving shared directories keeps (see the
/// module).
const FS_CAPS: [u32; 4] = [
    0, // CAP_CHOWN
    1, // CAP_DAC_OVERRIDE
    3, // CAP_FOWNER
    4, // CAP_FSETID
];
/// Largest file a jailed VMM may write (the console log; disks it writes
/// are preallocated and do not grow).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// A jail step that failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: {what}")]
    Step {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "jail: the vsock socket and the console file must be in one directory (the run dir), not {0} and {1}"
    )]
    RunDir(PathBuf, PathBuf),
    #[error("jail: {0} needs a vsock socket and a console file")]
    Incomplete(&'static str),
    #[error("jail: the waiter's seccomp filter")]
    Seccomp(#[source] crate::seccomp::SeccompError),
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Step { what, source }
}

/// -1 from a libc call becomes the error of errno.
fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// Enters the jail for `cfg` (see the module's steps) and returns, in the
/// jailed child, the VM to run (its paths rewritten to the jail's); the
/// parent becomes the waiter and never returns. Call it while the process
/// is still single-threaded.
pub fn enter(cfg: VmConfig, jail: &JailConfig) -> Result<VmConfig, JailError> {
    let (run_dir, sock_name, console_name) = run_dir(&cfg)?;
    for procs in &jail.cgroup_procs {
        std::fs::write(procs, "0").map_err(step(format!("joining {}", procs.display())))?;
    }
    let kvm = device("/dev/kvm")?;
    let urandom = device("/dev/urandom")?;
    // Made before the fork: the waiter writes the pid to it whether or not
    // the child has pivoted away from the host's files, and installs this
    // filter without allocating.
    let pid_path = jail.dir.join("vmm.pid");
    let pid_file = std::fs::File::create(&pid_path)
        .map_err(step(format!("creating {}", pid_path.display())))?;
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET;
    // SAFETY: unshare only changes this process's namespaces.
    check(unsafe { libc::unshare(flags) }).map_err(step("unsharing namespaces"))?;
    // SAFETY: the process is single-threaded here (the caller's contract),
    // so the child may run ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => return Err(step("forking into the pid namespace")(last())),
        0 => drop(pid_file),
        child => waiter(child, pid_file, jail),
    }
    let root = jail.dir.join("root");
    let mut cfg = cfg;
    build_root(&root, &mut cfg, jail, kvm, urandom, &run_dir)?;
    cfg.vsock.as_mut().expect("checked by run_dir").uds = Path::new("/run").join(sock_name);
    cfg.serial = SerialOutput::File(Path::new("/run").join(console_name));
    pivot(&root)?;
    let open_files = MAX_OPEN_FILES + FS_OPEN_FILES * cfg.fs.len() as u64;
    // A writable share lets the guest fill that file system anyway: the
    // file-size limit (which keeps the console from filling the disk) would
    // only cap the files the guest writes there.
    let file_bytes = if cfg.fs.iter().any(|f| !f.read_only) {
        libc::RLIM_INFINITY
    } else {
        MAX_FILE_BYTES.max(largest_writable_disk(&cfg))
    };
    limits(file_bytes, open_files)?;
    let caps: &[u32] = if cfg.fs.is_empty() { &[] } else { &FS_CAPS };
    drop_privileges(jail, caps)?;
    die_with_waiter()?;
    Ok(cfg)
}

/// The VMM ends when its waiter does (hull kills the waiter, its child).
/// Set after the uid changes: a credential change clears the parent-death
/// signal. (Sent from outside its pid namespace, SIGKILL reaches the
/// namespace's init.)
fn die_with_waiter() -> Result<(), JailError> {
    // SAFETY: prctl with constant arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) })
        .map_err(step("PR_SET_PDEATHSIG"))
}

fn last() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The run dir (holding the vsock socket and the console) and the two
/// names in it.
fn run_dir(cfg: &VmConfig) -> Result<(PathBuf, PathBuf, PathBuf), JailError> {
    let sock = &cfg
        .vsock
        .as_ref()
        .ok_or(JailError::Incomplete("the VM"))?
        .uds;
    let SerialOutput::File(console) = &cfg.serial else {
        return Err(JailError::Incomplete("the VM"));
    };
    let (Some(sd), Some(cd), Some(sn), Some(cn)) = (
        sock.parent(),
        console.parent(),
        sock.file_name(),
        console.file_name(),
    ) else {
        return Err(JailError::RunDir(sock.clone(), console.clone()));
    };
    if sd != cd {
        return Err(JailError::RunDir(sock.clone(), console.clone()));
    }
    Ok((sd.to_path_buf(), sn.into(), cn.into()))
}

/// The device number of a character device.
fn device(path: &str) -> Result<libc::dev_t, JailError> {
    let m = std::fs::metadata(path).map_err(step(format!("stat {path}")))?;
    if !m.file_type().is_char_device() {
        return Err(step(format!("{path} is not a character device"))(
            std::io::Error::from_raw_os_error(libc::ENODEV),
        ));
    }
    Ok(m.rdev())
}

/// The waiter (step 3): records the VMM's pid, drops everything it holds,
/// waits for the VMM and ends as it did. Never returns.
fn waiter(child: libc::pid_t, mut pid_file: std::fs::File, jail: &JailConfig) -> ! {
    use std::io::Write;
    let dropped = pid_file
        .write_all(child.to_string().as_bytes())
        .map_err(step("writing vmm.pid"))
        .and_then(|()| {
            drop(pid_file);
            shed(jail)
        })
        .and_then(|()| {
            seccompiler::apply_filter(crate::seccomp::waiter_program())
                .map_err(|e| JailError::Seccomp(crate::seccomp::SeccompError::Install("waiter", e)))
        });
    if let Err(e) = dropped {
        eprintln!("hull-vmm: the jail's waiter: {}", crate::error::chain(&e));
        // SAFETY: killing and reaping our own child; then ending at once.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            libc::_exit(1)
        }
    }
    let status = loop {
        let mut status = 0;
        // SAFETY: waiting for our own child into a local.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break status;
        }
        if r == -1 && last().raw_os_error() != Some(libc::EINTR) {
            break 1 << 8;
        }
    };
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restoring a signal's default action and raising it (core
        // dumps are off): the process ends by the signal the VMM ended by.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: ends the process; nothing is left to flush (stdio unused).
    unsafe { libc::_exit(code) }
}

/// What the waiter gives up before it waits: every file but stdio, its
/// working directory in the host's tree, core dumps, root and capabilities.
fn shed(jail: &JailConfig) -> Result<(), JailError> {
    // SAFETY: closes this process's files from 3 on; none is used after.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    check(if rc == -1 { -1 } else { 0 }).map_err(step("closing the waiter's files"))?;
    // "/" is the host's root until the child pivots, then the jail's: in
    // either order, pivot_root leaves the waiter's root and cwd in the jail.
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) })
        .map_err(step("setting RLIMIT_CORE"))?;
    drop_privileges(jail, &[])
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let what = || format!("mounting {}", target.display());
    let c = |p: &Path| cstr(p).map_err(step(what()));
    let src = src.map(c).transpose()?;
    let target_c = c(target)?;
    let fstype = fstype.map(|s| CString::new(s).expect("no NUL"));
    let data = data.map(|s| CString::new(s).expect("no NUL"));
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string alive for the call,
    // or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(rc).map_err(step(what()))
}

/// A file of the VM, bind-mounted at `/name` in the jail.
fn bind_file(root: &Path, src: &Path, name: &str, read_only: bool) -> Result<PathBuf, JailError> {
    let target = root.join(name);
    std::fs::write(&target, b"").map_err(step(format!("creating {}", target.display())))?;
    mount(Some(src), &target, None, libc::MS_BIND, None)?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags, None)?;
    Ok(Path::new("/").join(name))
}

/// A shared directory, bind-mounted at `/name` in the jail (nosuid, nodev;
/// read-only for a read-only share, on top of the server's own refusal).
fn bind_dir(root: &Path, src: &Path, name: &str, read_only: bool) -> Result<PathBuf, JailError> {
    let target = root.join(name);
    std::fs::create_dir(&target).map_err(step(format!("creating {}", target.display())))?;
    mount(Some(src), &target, None, libc::MS_BIND | libc::MS_REC, None)?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, &target, None, flags, None)?;
    Ok(Path::new("/").join(name))
}

/// Opens /proc/self/fd of a proc mounted for the moment at `root/proc`
/// (this pid namespace's), hands it to the FUSE servers, and detaches the
/// mount: the open directory keeps working, the jail has no /proc.
fn proc_self_fd(root: &Path) -> Result<(), JailError> {
    let dir = root.join("proc");
    std::fs::create_dir(&dir).map_err(step(format!("creating {}", dir.display())))?;
    mount(
        Some(Path::new("proc")),
        &dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let fd = std::fs::File::open(dir.join("self/fd")).map_err(step("opening /proc/self/fd"))?;
    crate::devices::virtio::fs::set_proc_self_fd(fd.into());
    let c = cstr(&dir).map_err(step("detaching /proc"))?;
    // SAFETY: a NUL-terminated path alive for the call.
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("detaching /proc"))?;
    std::fs::remove_dir(&dir).map_err(step("removing /proc"))
}

/// A device node only the jail's user may open.
fn node(path: &Path, dev: libc::dev_t, jail: &JailConfig) -> Result<(), JailError> {
    let what = || format!("making {}", path.display());
    let c = cstr(path).map_err(step(what()))?;
    // SAFETY: c is a NUL-terminated path alive for both calls.
    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) }).map_err(step(what()))?;
    // SAFETY: as above.
    check(unsafe { libc::chown(c.as_ptr(), jail.uid, jail.gid) }).map_err(step(what()))
}

fn build_root(
    root: &Path,
    cfg: &mut VmConfig,
    jail: &JailConfig,
    kvm: libc::dev_t,
    urandom: libc::dev_t,
    run_dir: &Path,
) -> Result<(), JailError> {
    // Nothing mounted from here on propagates back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    std::fs::create_dir_all(root).map_err(step(format!("creating {}", root.display())))?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("size=1m,mode=0755"),
    )?;
    for d in ["dev", "run", "old"] {
        let p = root.join(d);
        std::fs::create_dir(&p).map_err(step(format!("creating {}", p.display())))?;
    }
    cfg.kernel = bind_file(root, &cfg.kernel, "kernel", true)?;
    if let Some(i) = &cfg.initrd {
        cfg.initrd = Some(bind_file(root, i, "initrd", true)?);
    }
    for (n, d) in cfg.disks.iter_mut().enumerate() {
        d.path = bind_file(root, &d.path, &format!("disk{n}"), d.read_only)?;
    }
    for (n, f) in cfg.fs.iter_mut().enumerate() {
        f.path = bind_dir(root, &f.path, &format!("fs{n}"), f.read_only)?;
    }
    if !cfg.fs.is_empty() {
        proc_self_fd(root)?;
    }
    node(&root.join("dev/kvm"), kvm, jail)?;
    node(&root.join("dev/urandom"), urandom, jail)?;
    let run = root.join("run");
    mount(Some(run_dir), &run, None, libc::MS_BIND, None)?;
    mount(
        None,
        &run,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// pivot_root into `root`, the old root detached and gone; `/` read-only.
fn pivot(root: &Path) -> Result<(), JailError> {
    let new = cstr(root).map_err(step("pivot_root"))?;
    let old = cstr(&root.join("old")).map_err(step("pivot_root"))?;
    // SAFETY: two NUL-terminated paths alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) };
    check(if rc == -1 { -1 } else { 0 })
        .map_err(step(format!("pivot_root into {}", root.display())))?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    let old = c"/old";
    // SAFETY: a NUL-terminated literal.
    check(unsafe { libc::umount2(old.as_ptr(), libc::MNT_DETACH) })
        .map_err(step("detaching the old root"))?;
    std::fs::remove_dir("/old").map_err(step("removing /old"))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
        None,
    )
}

/// The length of the largest disk the guest may write (0 with none): the
/// file-size limit must let the VMM write anywhere in it.
fn largest_writable_disk(cfg: &VmConfig) -> u64 {
    cfg.disks
        .iter()
        .filter(|d| !d.read_only)
        .filter_map(|d| std::fs::metadata(&d.path).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

/// rlimits: open files, file size (at least [`MAX_FILE_BYTES`], more for a
/// writable disk of that size, no limit with a writable share), no core
/// dumps.
fn limits(file_bytes: u64, open_files: u64) -> Result<(), JailError> {
    let set = |res, value: u64, name: &str| {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads a valid rlimit.
        check(unsafe { libc::setrlimit(res, &lim) }).map_err(step(format!("setting {name}")))
    };
    set(libc::RLIMIT_NOFILE, open_files, "RLIMIT_NOFILE")?;
    set(libc::RLIMIT_FSIZE, file_bytes, "RLIMIT_FSIZE")?;
    set(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")?;
    // SAFETY: ignoring a signal installs no handler code.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(step("ignoring SIGXFSZ")(last()));
    }
    Ok(())
}

fn drop_privileges(jail: &JailConfig, keep: &[u32]) -> Result<(), JailError> {
    // Empty the bounding set while we still may (CAP_SETPCAP), but for
    // `keep`; EINVAL ends the list of capabilities this kernel knows.
    for cap in 0..64 {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } == -1 {
            if last().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(step(format!("dropping capability {cap}"))(last()));
        }
    }
    // SAFETY: setgroups with an empty list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }).map_err(step("setgroups"))?;
    let (u, g) = (jail.uid, jail.gid);
    // SAFETY: integer arguments.
    check(unsafe { libc::setresgid(g, g, g) }).map_err(step(format!("setresgid {g}")))?;
    if !keep.is_empty() {
        // SAFETY: prctl with integer arguments: the permitted set survives
        // the uid change below.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) })
            .map_err(step("PR_SET_KEEPCAPS"))?;
    }
    // SAFETY: integer arguments. From root to a non-zero uid, the kernel
    // clears the effective and ambient capability sets (and the permitted
    // one, unless KEEPCAPS).
    check(unsafe { libc::setresuid(u, u, u) }).map_err(step(format!("setresuid {u}")))?;
    set_caps(keep)?;
    // SAFETY: prctl with integer arguments.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
    .map_err(step("clearing ambient capabilities"))?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(step("no_new_privs"))
}

/// Sets the permitted and effective capability sets to exactly `caps`
/// (capset, version 3), and turns KEEPCAPS off again.
fn set_caps(caps: &[u32]) -> Result<(), JailError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut data = [Data::default(); 2];
    for &c in caps {
        let (word, bit) = ((c / 32) as usize, 1u32 << (c % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    // SAFETY: a valid header and two data structs, as version 3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    check(if rc == -1 { -1 } else { 0 }).map_err(step("capset"))?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) })
        .map_err(step("PR_SET_KEEPCAPS"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VsockConfig;

    #[test]
    fn the_socket_and_the_console_share_the_run_dir() {
        let mut cfg = VmConfig::new("/k".into());
        cfg.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/s/run/vsock.sock".into(),
        });
        cfg.serial = SerialOutput::File("/s/run/console.log".into());
        let (dir, s, c) = run_dir(&cfg).unwrap();
        assert_eq!(
            (dir.as_path(), s.as_path(), c.as_path()),
            (
                Path::new("/s/run"),
                Path::new("vsock.sock"),
                Path::new("console.log")
            )
        );
        cfg.serial = SerialOutput::File("/elsewhere/console.log".into());
        let e = run_dir(&cfg).unwrap_err();
        assert!(matches!(e, JailError::RunDir(..)), "{e}");
        cfg.vsock = None;
        assert!(matches!(
            run_dir(&cfg).unwrap_err(),
            JailError::Incomplete(_)
        ));
    }
}
