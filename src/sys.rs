//! The system calls hull makes on the host, each wrapped once with its
//! safety argument, so the rest of the library is safe code (as the agent's
//! own `sys` module does for the guest side).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers; no memory is involved.
    check(unsafe { libc::kill(pid, signal) })
}

/// The effective user id of this process.
/// Let a write to a closed pipe end the process quietly, as `ls | head`
/// expects, instead of failing `println!` with a panic. Only for commands that
/// print and own nothing: a command holding a container must see EPIPE.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fills `buf` from the kernel's random pool.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let tail = &mut buf[filled..];
        // SAFETY: the pointer and length describe `tail`, which getrandom
        // writes at most that many bytes into.
        let n = unsafe { libc::getrandom(tail.as_mut_ptr().cast(), tail.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Takes an exclusive `flock` on `file`, waiting for it (retried on EINTR).
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on an fd `file` owns for the duration of the call.
        match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Takes an exclusive `flock` on `file` if nobody holds it: Ok(false) when
/// another open file description does (retried on EINTR).
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock on an fd `file` owns for the duration of the call.
        match check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Whether a byte is waiting on the socket `fd` (left unread); false at
/// end of stream or on an error.
pub fn peek_byte(fd: &impl AsRawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which outlives the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK,
        )
    };
    n > 0
}

/// A set of signal numbers.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn of(signals: &[i32]) -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to `set`.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: valid pointer to `set`; an invalid number is refused
            // with EINVAL, not undefined behaviour.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        SignalSet(set)
    }

    /// Blocks these signals in the calling thread (and in the threads it
    /// starts afterwards).
    pub fn block(&self) {
        // SAFETY: valid pointer to the set; the old mask is not wanted.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// Waits for one of these (blocked) signals and returns it.
    pub fn wait(&self) -> i32 {
        loop {
            let mut sig = 0;
            // SAFETY: valid pointers to the set and to `sig`.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                return sig;
            }
        }
    }

    /// The first of these signals that is pending (arrived while blocked).
    pub fn first_pending(signals: &[i32]) -> Option<i32> {
        // SAFETY: sigset_t is plain data; sigpending fills it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to `set`.
        unsafe { libc::sigpending(&mut set) };
        signals
            .iter()
            .copied()
            // SAFETY: valid pointer to `set`.
            .find(|&s| unsafe { libc::sigismember(&set, s) } == 1)
    }
}

/// Makes `cmd`'s process get SIGKILL when its parent (this thread) dies,
/// and start with no signal blocked (a mask survives exec).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (prctl, sigemptyset, sigprocmask) on a
    // local set.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Starts `cmd`'s process in a network namespace of its own (empty but for
/// a down `lo`; it ends with the last process in it).
pub fn in_new_netns(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // unshare(2), which is async-signal-safe and takes no pointers.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Lets the child of `cmd` start with no signal blocked (hull blocks the
/// stop signals for itself; a daemon it starts, such as a network's
/// dnsmasq, must still obey SIGTERM and SIGHUP).
pub fn unblock_signals(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (sigemptyset, sigprocmask) on a local set.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// The size (rows, columns) of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one into it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to `ws`; a bad fd is an error return.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Terminal settings, as saved before a change.
#[derive(Clone, Copy)]
pub struct Termios(libc::termios);

/// Puts the terminal on `fd` in raw mode; returns the settings to restore,
/// or None when `fd` is not a terminal.
pub fn make_raw(fd: RawFd) -> Option<Termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; a non-terminal fd is an error return.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return None;
    }
    let saved = Termios(t);
    // SAFETY: valid pointers to `t`, initialised by tcgetattr.
    unsafe {
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(fd, libc::TCSANOW, &t);
    }
    Some(saved)
}

/// Restores terminal settings `make_raw` returned.
pub fn restore_terminal(fd: RawFd, saved: &Termios) {
    // SAFETY: valid pointer to settings tcgetattr filled.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved.0) };
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: two new fds that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Which side of a fork this is.
pub enum Fork {
    Parent,
    Child,
}

/// Forks this process.
///
/// # Safety
/// The caller must be single-threaded: the child goes on running Rust
/// code, which is only sound when no other thread held a lock at the fork.
pub unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: the caller guarantees there is only one thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        _ => Ok(Fork::Parent),
    }
}

/// Starts a new session with this process as its leader (no controlling
/// terminal), and points stdin, stdout and stderr at `null`.
pub fn detach_from_terminal(null: &OwnedFd) -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    for fd in 0..3 {
        // SAFETY: dup2 takes two integers; `null` is an open fd we own.
        check(unsafe { libc::dup2(null.as_raw_fd(), fd) })?;
    }
    Ok(())
}

/// Mounts the directories `lower` (top first) as one read-only overlay at
/// `target`.
pub fn mount_overlay_readonly(lower: &str, target: &Path) -> io::Result<()> {
    let data = CString::new(format!("lowerdir={lower}"))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let target = cpath(target)?;
    let overlay = c"overlay";
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::mount(
            overlay.as_ptr(),
            target.as_ptr(),
            overlay.as_ptr(),
            libc::MS_RDONLY,
            data.as_ptr().cast(),
        )
    })
}

/// Detaches the mount at `target` (lazily, as `umount -l`).
pub fn unmount_detach(target: &Path) -> io::Result<()> {
    let target = cpath(target)?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// Moves the calling thread into the network namespace `ns` (an open
/// nsfs file).
pub fn setns_net(ns: &File) -> io::Result<()> {
    // SAFETY: `ns` is an open fd for the duration of the call.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// Moves the calling thread into a new network namespace.
pub fn unshare_net() -> io::Result<()> {
    // SAFETY: unshare takes no pointers.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) })
}

/// Bind-mounts `src` onto `target` (as `mount --bind`).
pub fn bind_mount(src: &Path, target: &Path) -> io::Result<()> {
    let (src, target) = (cpath(src)?, cpath(target)?);
    // SAFETY: valid NUL-terminated strings for the duration of the call; no
    // data argument.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// Opens /dev/net/tun as tap `name` with IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR, in the calling thread's network namespace.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF reads and writes `req`, valid for the call, on an
    // fd `tun` owns.
    check(unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(OwnedFd::from(tun))
}

/// Lets `fd` survive exec (clears FD_CLOEXEC), to hand it to a child.
pub fn inherit_fd(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns; no pointers.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) })
}
