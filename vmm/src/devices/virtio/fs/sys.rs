//! The system calls the FUSE server makes, each on a directory or inode fd
//! it holds (never on a path the guest spelled out from the host's root).
//! Errors are errno values, as the FUSE reply carries them.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The errno of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// -1 becomes the errno, anything else Ok.
fn check(rc: libc::c_int) -> Result<(), i32> {
    if rc == -1 { Err(errno()) } else { Ok(()) }
}

pub fn cname(name: &[u8]) -> Result<CString, i32> {
    CString::new(name).map_err(|_| libc::EINVAL)
}

/// struct open_how (linux/openat2.h); libc's is non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens the single component `name` below `dir` with `flags`, resolving
/// nothing outside it: no `..`, no symlink (a trailing symlink opened with
/// O_PATH | O_NOFOLLOW is the link itself), no magic link.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &[u8],
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, i32> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            u64::from(mode)
        } else {
            0
        },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    openat2(dir, name, &how)
}

fn openat2(dir: BorrowedFd<'_>, name: &[u8], how: &OpenHow) -> Result<OwnedFd, i32> {
    let c = cname(name)?;
    loop {
        // SAFETY: `c` is NUL-terminated and `how` a valid open_how, both
        // alive for the call; the result is a new fd we own.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let e = errno();
        // A rename elsewhere during the walk: try again, as the man page says.
        if e != libc::EAGAIN && e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Reopens the inode behind an O_PATH `fd` with `flags` through the
/// process's /proc/self/fd directory `proc_fd`. The magic link names our
/// own fd, so the file opened is the inode the server already holds.
/// (openat2 with the one magic link allowed: the thread's seccomp filter
/// has no openat.)
pub fn reopen(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd, i32> {
    let name = fd.as_raw_fd().to_string();
    let flags = (flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL | libc::O_TMPFILE))
        | libc::O_CLOEXEC;
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: 0,
    };
    openat2(proc_fd, name.as_bytes(), &how)
}

/// lstat of the inode behind `fd` (any fd, O_PATH included).
pub fn stat(fd: BorrowedFd<'_>) -> Result<libc::stat64, i32> {
    // SAFETY: stat64 is plain data; all zeros is a valid value.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: an empty C string and a stat buffer we own.
    check(unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

pub fn statfs(fd: BorrowedFd<'_>) -> Result<libc::statfs64, i32> {
    // SAFETY: plain data; zeros are valid.
    let mut st: libc::statfs64 = unsafe { std::mem::zeroed() };
    // SAFETY: a buffer we own.
    check(unsafe { libc::fstatfs64(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// The target of the symlink behind an O_PATH `fd`.
pub fn readlink(fd: BorrowedFd<'_>) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; super::protocol::PATH_MAX + 1];
    // SAFETY: the buffer and its length are ours.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), i32> {
    let c = cname(name)?;
    // SAFETY: a NUL-terminated name alive for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &[u8], mode: u32, rdev: u64) -> Result<(), i32> {
    let c = cname(name)?;
    // SAFETY: as above.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) })
}

pub fn symlinkat(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), i32> {
    let (t, c) = (cname(target)?, cname(name)?);
    // SAFETY: two NUL-terminated strings alive for the call.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &[u8], flags: i32) -> Result<(), i32> {
    let c = cname(name)?;
    // SAFETY: as above.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

pub fn renameat2(
    old: BorrowedFd<'_>,
    oldname: &[u8],
    new: BorrowedFd<'_>,
    newname: &[u8],
    flags: u32,
) -> Result<(), i32> {
    let (o, n) = (cname(oldname)?, cname(newname)?);
    // SAFETY: two NUL-terminated names alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old.as_raw_fd(),
            o.as_ptr(),
            new.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    };
    check(if rc == -1 { -1 } else { 0 })
}

/// A new name `name` in `dir` for the inode behind the O_PATH `fd`,
/// through its /proc/self/fd magic link (linkat's AT_EMPTY_PATH would need
/// CAP_DAC_READ_SEARCH).
pub fn link(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(), i32> {
    let src = cname(fd.as_raw_fd().to_string().as_bytes())?;
    let c = cname(name)?;
    // SAFETY: two NUL-terminated names alive for the call.
    check(unsafe {
        libc::linkat(
            proc_fd.as_raw_fd(),
            src.as_ptr(),
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
}

/// chown of the inode behind `fd` itself (a symlink is not followed);
/// u32::MAX leaves an id as it is.
pub fn chown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), i32> {
    // SAFETY: an empty C string; integer arguments.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// chmod of the inode behind the O_PATH `fd`, through its magic link
/// (fchmod does not take O_PATH fds). Only for files and directories: the
/// caller never passes a symlink.
pub fn chmod(proc_fd: BorrowedFd<'_>, fd: BorrowedFd<'_>, mode: u32) -> Result<(), i32> {
    let name = cname(fd.as_raw_fd().to_string().as_bytes())?;
    // SAFETY: a NUL-terminated name alive for the call.
    check(unsafe { libc::fchmodat(proc_fd.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// Sets the times of the inode behind the O_PATH `fd` (file or directory),
/// through its magic link.
pub fn utimes(
    proc_fd: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    times: &[libc::timespec; 2],
) -> Result<(), i32> {
    let name = cname(fd.as_raw_fd().to_string().as_bytes())?;
    // SAFETY: a NUL-terminated name and two timespecs alive for the call.
    check(unsafe { libc::utimensat(proc_fd.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), i32> {
    let len = i64::try_from(len).map_err(|_| libc::EFBIG)?;
    // SAFETY: integer arguments.
    check(unsafe { libc::ftruncate64(fd.as_raw_fd(), len) })
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> Result<usize, i32> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: the buffer and its length are ours.
        let n = unsafe { libc::pread64(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), off) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], off: u64) -> Result<usize, i32> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    loop {
        // SAFETY: the buffer and its length are ours.
        let n = unsafe { libc::pwrite64(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) };
        if n >= 0 {
            return Ok(n as usize);
        }
        if errno() != libc::EINTR {
            return Err(errno());
        }
    }
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> Result<(), i32> {
    // SAFETY: an fd we hold.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: u32, off: u64, len: u64) -> Result<(), i32> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    let len = i64::try_from(len).map_err(|_| libc::EINVAL)?;
    // SAFETY: integer arguments.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode as i32, off, len) })
}

pub fn lseek(fd: BorrowedFd<'_>, off: u64, whence: u32) -> Result<u64, i32> {
    let off = i64::try_from(off).map_err(|_| libc::EINVAL)?;
    // SAFETY: integer arguments.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence as i32) };
    if r < 0 { Err(errno()) } else { Ok(r as u64) }
}

/// One entry of a directory read with getdents64.
pub struct DirEntry<'a> {
    pub ino: u64,
    pub off: u64,
    pub typ: u8,
    pub name: &'a [u8],
}

/// Reads entries of `fd` from its current position into `buf`; returns
/// the bytes filled (0 at the end).
pub fn getdents(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, i32> {
    // SAFETY: the buffer and its length are ours.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// The entries in the first `len` bytes getdents64 filled.
pub fn entries(buf: &[u8]) -> impl Iterator<Item = DirEntry<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rec = buf.get(pos..)?;
        if rec.len() < 19 {
            return None;
        }
        let ino = u64::from_ne_bytes(rec[0..8].try_into().ok()?);
        let off = u64::from_ne_bytes(rec[8..16].try_into().ok()?);
        let reclen = usize::from(u16::from_ne_bytes(rec[16..18].try_into().ok()?));
        let typ = rec[18];
        if reclen < 19 || reclen > rec.len() {
            return None;
        }
        let raw = &rec[19..reclen];
        let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        pos += reclen;
        Some(DirEntry {
            ino,
            off,
            typ,
            name,
        })
    })
}
