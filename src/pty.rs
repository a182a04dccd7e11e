//! Terminals and fifos for the OCI runtime front end: a pty pair whose
//! master goes to the engine over its console socket (SCM_RIGHTS, as runc
//! sends it), the slave made the monitor's controlling terminal (so the
//! engine's window size changes reach it as SIGWINCH), and the fifo that
//! holds a created container until `start`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A new pty pair: (master, slave), both close-on-exec.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the integers; the name, termios
    // and winsize pointers may be null.
    check(unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: two new fds that nothing else owns.
    let pair = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&pair.0, &pair.1] {
        // SAFETY: fcntl on an fd we own; no pointers.
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    }
    Ok(pair)
}

/// Sends `fd` over the Unix socket at `socket` in one SCM_RIGHTS message,
/// with `name` as its data (runc sends the pty's path there).
pub fn send_fd(socket: &Path, fd: &OwnedFd, name: &str) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let data = if name.is_empty() { "pty" } else { name };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, room for one header
    // with one int, so CMSG_FIRSTHDR is non-null and its data fits.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
    }
    // SAFETY: msg and everything it points at (iov, data, control) live
    // for the duration of the call.
    let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `slave` this process's controlling terminal in a new session and
/// its stdin, stdout and stderr. Call in a process that is not a process
/// group leader (a freshly forked child).
pub fn become_terminal_owner(slave: &OwnedFd) -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    // SAFETY: TIOCSCTTY takes an integer argument, on an fd we own.
    check(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })?;
    for fd in 0..3 {
        // SAFETY: dup2 takes two integers; `slave` is an open fd we own.
        check(unsafe { libc::dup2(slave.as_raw_fd(), fd) })?;
    }
    Ok(())
}

/// Starts a new session (no controlling terminal), keeping stdio as is.
pub fn new_session() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })
}

/// Makes a fifo at `path` (mode 0600).
pub fn mkfifo(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::mkfifo(c.as_ptr(), 0o600) })
}

/// The calling process's id.
pub fn own_pid() -> i32 {
    std::process::id() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pty_master_sent_over_a_socket_arrives_as_a_working_fd() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (master, slave) = open_pty().unwrap();
        send_fd(&path, &master, "/dev/pts/x").unwrap();
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u8; 64];
        // SAFETY: plain data, zeroes valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: msg points at live buffers for the call.
        let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, 0) };
        assert_eq!(&buf[..n as usize], b"/dev/pts/x");
        // SAFETY: the kernel filled one SCM_RIGHTS header with one fd.
        let got = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(c).cast::<libc::c_int>(),
            ))
        };
        // What the slave writes, the received master reads.
        let mut s = std::fs::File::from(slave);
        s.write_all(b"hi\n").unwrap();
        let mut m = std::fs::File::from(got);
        let mut out = [0u8; 8];
        let n = m.read(&mut out).unwrap();
        assert!(out[..n].starts_with(b"hi"), "{:?}", &out[..n]);
    }
}
