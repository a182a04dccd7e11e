//! The system calls the agent makes, each wrapped once with its safety
//! argument, so the rest of the agent is safe code.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hull_agent::protocol::{Exit, Rlimit};

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Milliseconds since the kernel started (CLOCK_BOOTTIME).
pub fn boot_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Writes `mark` to hull-vmm's boot-timer port (no-op outside a VM).
pub fn boot_mark(mark: u8) {
    const PORT: u16 = 0x440;
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(PORT as libc::c_ulong, 1, 1) } != 0 {
        return;
    }
    // SAFETY: port 0x440 is hull-vmm's boot timer, which has no side effect
    // beyond recording the time; we hold the I/O permission for it.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") PORT, in("al") mark, options(nomem, nostack));
    }
}

pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

pub fn chroot_here() -> io::Result<()> {
    let dot = cstr(".")?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::chroot(dot.as_ptr()) })?;
    std::env::set_current_dir("/")
}

pub fn pivot_root(new_root: &str, put_old: &str) -> io::Result<()> {
    let (n, o) = (cstr(new_root)?, cstr(put_old)?);
    // SAFETY: valid NUL-terminated paths; pivot_root has no libc wrapper.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) } as libc::c_int)
}

pub fn umount_detach(target: &str) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) })
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) })
}

pub fn fork() -> io::Result<i32> {
    // SAFETY: the agent forks before starting any thread in ns mode.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Mixes `bytes` into the kernel's entropy pool, credited in full, and
/// reseeds the CRNG from it at once (RNDADDENTROPY, RNDRESEEDCRNG), so
/// /dev/urandom and getrandom no longer follow a snapshot's pool.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203; // _IOW('R', 3, int[2])
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207; // _IO('R', 7)
    let len = libc::c_int::try_from(bytes.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u32> = vec![0; 2 + bytes.len().div_ceil(4)];
    info[0] = (len * 8) as u32;
    info[1] = len as u32;
    for (word, chunk) in info[2..].iter_mut().zip(bytes.chunks(4)) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(w);
    }
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")?;
    // SAFETY: `info` is a rand_pool_info header followed by buf_size bytes,
    // valid for the call; the kernel only reads it.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) })?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    check(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG as _) })
}

/// Reads and drops what the guest's hwrng holds from before a snapshot:
/// the virtio-rng driver's buffer (64 bytes the template's device filled)
/// and any bytes the hw_random core kept from a short read. One
/// non-blocking read returns exactly those (and at most a few fresh ones
/// if this clone's device answered the driver's next request meanwhile),
/// so every later read of /dev/hwrng gets this clone's own bytes. Returns
/// how many bytes were dropped; a guest without an hwrng drops none.
pub fn drain_hwrng() -> io::Result<usize> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/hwrng")
    {
        Ok(f) => f,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut buf = [0u8; 512];
    match f.read(&mut buf) {
        Ok(n) => Ok(n),
        // Nothing buffered (the driver's request was in flight at the
        // snapshot: this clone's device fills it), or no device behind it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENODEV)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Steps the wall clock (CLOCK_REALTIME) to `ns` since the epoch.
pub fn set_wall_clock(ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(ns / 1_000_000_000)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call.
    check(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(pid, sig) };
}

pub fn reboot() -> ! {
    // SAFETY: sync and reboot take no pointers; reboot(RB_AUTOBOOT) resets
    // the VM, which hull-vmm turns into a clean exit.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::process::exit(0)
}

/// Blocks until some child is a zombie, without reaping it. False when
/// there are no children at all.
pub fn wait_for_zombie() -> bool {
    // SAFETY: siginfo_t is plain data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointer to `info`; WNOWAIT leaves the child reapable.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            return true;
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// Reaps one zombie child if there is one: (pid, raw status).
pub fn reap_one() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: valid pointer to `status`.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Decodes a wait status. `oom_kills_before` (from [`oom_kills`] when the
/// process started) tells a SIGKILL from the OOM killer from any other.
pub fn exit_from_status(pid: i32, status: i32, oom_kills_before: Option<u64>) -> Exit {
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    let oom = match (oom_kills_before, oom_kills()) {
        (Some(before), Some(now)) => now > before,
        // No event counters (the guest kernel has none): the kernel log.
        _ => signal == Some(libc::SIGKILL) && kernel_log_has_oom_kill(pid),
    };
    let reason = (signal == Some(libc::SIGKILL) && oom)
        .then(|| "out of memory: killed by the kernel's OOM killer".to_string());
    Exit {
        code,
        signal,
        reason,
        at_ms: 0.0,
    }
}

/// Whether the kernel log says the OOM killer killed `pid`. Reads the
/// records /dev/kmsg holds now (bounded), without waiting for more.
fn kernel_log_has_oom_kill(pid: i32) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let needle = format!("Killed process {pid} ");
    let mut buf = vec![0u8; 8192];
    for _ in 0..100_000 {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                if String::from_utf8_lossy(&buf[..n]).contains(&needle) {
                    return true;
                }
            }
            // EPIPE: records were overwritten while we read; go on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false, // EAGAIN: the end
        }
    }
    false
}

/// How many processes the kernel's OOM killer has killed so far (in a VM:
/// in the guest; in namespaces: on the host, so a kill elsewhere while the
/// process ran is counted too).
pub fn oom_kills() -> Option<u64> {
    std::fs::read_to_string("/proc/vmstat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })
}

/// A new pseudo-terminal (master, slave) of the given size.
pub fn openpty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the valid integers; name and termios
    // are null (not wanted), the winsize pointer is valid.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    })?;
    // SAFETY: openpty returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

pub fn set_winsize(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name.trim_start_matches("RLIMIT_") {
        "NOFILE" => libc::RLIMIT_NOFILE,
        "NPROC" => libc::RLIMIT_NPROC,
        "CORE" => libc::RLIMIT_CORE,
        "STACK" => libc::RLIMIT_STACK,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "AS" => libc::RLIMIT_AS,
        "CPU" => libc::RLIMIT_CPU,
        "FSIZE" => libc::RLIMIT_FSIZE,
        _ => return None,
    })
}

/// In the forked child, before exec: new session (and controlling terminal),
/// rlimits, then groups, gid and uid (in that order: dropping uid last).
pub fn child_setup(
    tty: bool,
    groups: &[u32],
    gid: u32,
    uid: u32,
    rlimits: &[Rlimit],
    privileges: &crate::privileges::Prepared,
) -> io::Result<()> {
    reset_signals();
    // SAFETY: plain system calls on integers or on pointers to data that
    // lives across each call; all async-signal-safe.
    unsafe {
        check(libc::setsid())?;
        if tty {
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
        }
        for r in rlimits {
            if let Some(res) = rlimit_resource(&r.name) {
                let lim = libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                };
                check(libc::setrlimit(res, &lim))?;
            }
        }
        privileges.before_user_switch()?;
        check(libc::setgroups(groups.len(), groups.as_ptr()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    privileges.after_user_switch()
}

/// A listening AF_VSOCK stream socket on `port` (any CID).
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes integers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: the address pointer and length describe `addr`.
    check(unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of_val(&addr) as u32,
        )
    })?;
    // SAFETY: listen takes integers.
    check(unsafe { libc::listen(fd, 64) })?;
    Ok(sock)
}

/// Accepts one connection on a listening socket.
pub fn accept(fd: i32) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: null address pointers: we do not want the peer address.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if c >= 0 {
            // SAFETY: a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(c) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Gives a process the signal state a container's process expects: nothing
/// blocked, nothing ignored (whatever started the agent may have blocked or
/// ignored signals, and both survive fork and exec). Async-signal-safe.
pub fn reset_signals() {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it, and
    // sigprocmask and sigaction(SIG_DFL) are async-signal-safe.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Dies with SIGKILL when the parent does. (In a new pid namespace the
/// parent is outside it and getppid says 0, so there is no re-check; the
/// parent waits for us, so it does not go first by itself.)
pub fn die_with_parent() {
    // SAFETY: prctl takes integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// A detached copy of the mount at `path` (open_tree(OPEN_TREE_CLONE)): a
/// bind mount that is in no mount namespace until it is attached.
pub fn clone_mount(path: &str) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint;
    // SAFETY: a valid NUL-terminated path; open_tree returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `mnt` id-mapped through the user namespace
/// `userns` (and read-only when `readonly`): a file owned by host id N shows
/// as the id that N maps to in that namespace's parent, seen from inside as N.
pub fn idmap_mount(mnt: &OwnedFd, userns: &OwnedFd, readonly: bool) -> io::Result<()> {
    let rdonly = if readonly { libc::MOUNT_ATTR_RDONLY } else { 0 };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | rdonly,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = cstr("")?;
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: the
    // fd itself), and the attribute pointer and size describe `attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of_val(&attr),
        )
    };
    check(r as libc::c_int)
}

/// Attaches the detached mount `mnt` at `target`.
pub fn attach_mount(mnt: &OwnedFd, target: &str) -> io::Result<()> {
    let (empty, t) = (cstr("")?, cstr(target)?);
    // SAFETY: valid NUL-terminated paths; move_mount has no libc wrapper.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r as libc::c_int)
}

/// Joins the user namespace `userns` as its root: uid and gid 0 there, no
/// supplementary groups, then re-arms the parent-death signal (a change of
/// credentials clears it).
pub fn become_root_in(userns: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns takes a namespace fd we own; the others take integers or
    // a null list (no groups).
    unsafe {
        let parent = libc::getppid();
        check(libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(0, 0, 0))?;
        check(libc::setresuid(0, 0, 0))?;
        die_with_parent();
        if libc::getppid() != parent {
            // The parent went while we changed credentials.
            libc::_exit(137);
        }
    }
    Ok(())
}

/// A pipe (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the valid array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A new user namespace whose root is host id `base` (ids 0..size map to
/// base..base+size), as an fd. A short-lived child makes it with
/// unshare(CLONE_NEWUSER); the agent, privileged outside, writes the maps.
pub fn new_user_namespace(base: u32, size: u32) -> io::Result<OwnedFd> {
    let (ready_r, ready_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let child = fork()?;
    if child == 0 {
        // The child: only async-signal-safe calls until _exit.
        // SAFETY: unshare, write, read and _exit on integers and on the
        // local buffers.
        unsafe {
            // Our copies of the parent's ends: without closing them the
            // read below would never see the parent close its own.
            libc::close(ready_r.as_raw_fd());
            libc::close(done_w.as_raw_fd());
            let errno: i32 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            let bytes = errno.to_ne_bytes();
            libc::write(ready_w.as_raw_fd(), bytes.as_ptr().cast(), 4);
            let mut b = 0u8;
            libc::read(done_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_w);
    drop(done_r);
    let result = (|| {
        let mut bytes = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::from(ready_r), &mut bytes)?;
        let errno = i32::from_ne_bytes(bytes);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let map = format!("0 {base} {size}\n");
        std::fs::write(format!("/proc/{child}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{child}/gid_map"), &map)?;
        let fd = std::fs::File::open(format!("/proc/{child}/ns/user"))?;
        Ok(OwnedFd::from(fd))
    })();
    drop(done_w);
    let mut status = 0;
    // SAFETY: valid pointer to `status`; `child` is our child.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    result
}

/// The kernel's `struct rtentry` (x86_64 layout; not in every libc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    rt_pad4: [libc::c_short; 3],
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // both are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets interface `name` up (and running).
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`,
    // which outlives the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the kernel just filled in ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
}

/// Gives the Ethernet interface `name` the hardware address `mac` (as `ip
/// link set address`; virtio-net takes it while up).
pub fn set_mac(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: sockaddr is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in addr.sa_data.iter_mut().zip(mac) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    // SAFETY: SIOCSIFHWADDR reads `req`, valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) })
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: SIOCSIFMTU reads `req`, valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req) })
}

/// The IPv4 netmask of a `prefix_len` (at most 32) as a host-order u32.
fn netmask4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// Gives interface `name` the IPv4 address `addr`/`prefix_len`.
pub fn set_ipv4(name: &str, addr: std::net::Ipv4Addr, prefix_len: u8) -> io::Result<()> {
    if prefix_len > 32 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    // SAFETY: SIOCSIFADDR reads `req`, valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) })?;
    let mask = netmask4(prefix_len);
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask.into());
    // SAFETY: SIOCSIFNETMASK reads `req`, valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req) })
}

/// Adds the IPv4 route to `dest`/`prefix_len` on interface `name`, via
/// `gateway` or on the link (`ip route add`); 0.0.0.0/0 is the default route.
pub fn add_route4(
    name: &str,
    dest: std::net::Ipv4Addr,
    prefix_len: u8,
    gateway: Option<std::net::Ipv4Addr>,
) -> io::Result<()> {
    if prefix_len > 32 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let dev = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mask = netmask4(prefix_len);
    let mut flags = libc::RTF_UP;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    let sock = inet_socket()?;
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in((u32::from(dest) & mask).into()),
        rt_gateway: sockaddr_in(gateway.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_in(mask.into()),
        rt_flags: flags as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_tos: 0,
        rt_class: 0,
        rt_pad4: [0; 3],
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a struct rtentry, which RtEntry lays out; it
    // is valid for the call, and rt_dev points at `dev`'s NUL-terminated
    // name, which outlives it (the kernel only reads it).
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route) })
}

/// The kernel's `struct in6_ifreq` (SIOCSIFADDR on an AF_INET6 socket).
#[repr(C)]
struct In6Ifreq {
    ifr6_addr: libc::in6_addr,
    ifr6_prefixlen: u32,
    ifr6_ifindex: libc::c_int,
}

/// The kernel's `struct in6_rtmsg` (SIOCADDRT on an AF_INET6 socket).
#[repr(C)]
struct In6Rtmsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

fn inet6_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The index of interface `name`.
fn if_index(sock: &OwnedFd, name: &str) -> io::Result<libc::c_int> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads the name and writes the index of `req`,
    // which outlives the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) })?;
    // SAFETY: the kernel just filled in ifru_ifindex.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// Gives interface `name` the IPv6 address `addr`/`prefix_len`.
pub fn set_ipv6(name: &str, addr: std::net::Ipv6Addr, prefix_len: u8) -> io::Result<()> {
    if prefix_len > 128 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let sock = inet6_socket()?;
    let req = In6Ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix_len),
        ifr6_ifindex: if_index(&sock, name)?,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads a struct in6_ifreq,
    // which In6Ifreq lays out; it is valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req) })
}

/// Adds the IPv6 route to `dest`/`prefix_len` on interface `name`, via
/// `gateway` or on the link; ::/0 is the default route (metric 1, as
/// before; the others get the kernel's default for user routes).
pub fn add_route6(
    name: &str,
    dest: std::net::Ipv6Addr,
    prefix_len: u8,
    gateway: Option<std::net::Ipv6Addr>,
) -> io::Result<()> {
    if prefix_len > 128 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    let mut flags = libc::RTF_UP;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    let sock = inet6_socket()?;
    let addr = |a: std::net::Ipv6Addr| libc::in6_addr {
        s6_addr: a.octets(),
    };
    let route = In6Rtmsg {
        rtmsg_dst: addr((u128::from(dest) & mask).into()),
        rtmsg_src: addr(std::net::Ipv6Addr::UNSPECIFIED),
        rtmsg_gateway: addr(gateway.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED)),
        rtmsg_type: 0,
        rtmsg_dst_len: u16::from(prefix_len),
        rtmsg_src_len: 0,
        rtmsg_metric: u32::from(prefix_len == 0),
        rtmsg_info: 0,
        rtmsg_flags: flags as u32,
        rtmsg_ifindex: if_index(&sock, name)?,
    };
    // SAFETY: SIOCADDRT on an AF_INET6 socket reads a struct in6_rtmsg,
    // which In6Rtmsg lays out; it is valid for the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route) })
}

/// Moves this process into the network namespace held at `path` (an nsfs
/// bind mount, or /proc/PID/ns/net).
pub fn join_netns(path: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: f is an open namespace fd for the duration of the call.
    check(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) })
}

#[cfg(test)]
mod ipv6_layout_tests {
    use super::*;

    #[test]
    fn ipv6_ioctl_structs_have_the_kernels_x86_64_layout() {
        // struct in6_ifreq: 16-byte address, u32 prefix length, int index.
        assert_eq!(std::mem::size_of::<In6Ifreq>(), 24);
        // struct in6_rtmsg: three addresses, type, two lengths, metric,
        // unsigned long info, flags, ifindex.
        assert_eq!(std::mem::size_of::<In6Rtmsg>(), 80);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, rtmsg_info), 64);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, rtmsg_ifindex), 76);
    }
}
