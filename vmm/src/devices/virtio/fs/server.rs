//! A passthrough FUSE server for one shared host directory.
//!
//! The rules that keep the guest inside the share:
//! - every inode the guest knows is an O_PATH fd the server holds, found
//!   one name at a time below its parent's fd with openat2
//!   (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, and
//!   O_NOFOLLOW): a name with '/', "." or "..", or an empty one, is refused
//!   before any call; a symlink is opened as the link, never followed;
//! - files are opened for I/O through /proc/self/fd/N of the server's own
//!   O_PATH fd, so the file opened is the inode already held; only regular
//!   files and directories are opened;
//! - LINK names only inodes the server handed out (so no hard link to a
//!   file outside the share can be made from the guest);
//! - a read-only share refuses every change with EROFS here, whatever the
//!   guest's mount flags;
//! - the guest cannot make device nodes, nor set-user-ID or set-group-ID
//!   files (those bits are dropped from the modes it asks for);
//! - owners and modes are the host's: attributes are the host's lstat;
//!   what the guest creates is given the caller's uid and gid when the
//!   server may chown (as root), else it belongs to the server's user.
//!
//! Everything in a request is untrusted: lengths are checked against the
//! request, replies are bounded by the guest's buffer, tables are bounded.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::dax::{DaxWindow, MAP_ALIGNMENT_SHIFT};
use super::protocol::{self as p, Args, Out};
use super::sys;
use crate::config::FsCache;

mod io;
mod mapping;
mod readdir;

pub use io::GuestData;

/// Node id of the share's root (FUSE_ROOT_ID).
pub const ROOT_ID: u64 = 1;
/// Most inodes the guest may hold at once (each is an open fd).
pub const MAX_INODES: usize = 1 << 16;
/// Most files and directories the guest may have open at once.
pub const MAX_HANDLES: usize = 1 << 14;
/// The largest READ or WRITE payload (what INIT allows the guest): 256
/// pages, FUSE's own limit, so that `dd bs=1M` is one request per block.
pub const MAX_IO: usize = 1 << 20;
/// The largest READDIR reply (the guest asks for a page at a time).
pub const MAX_DIR: usize = 128 << 10;
/// How long the guest may cache names and attributes, seconds.
const TIMEOUT: u64 = 1;

struct Inode {
    fd: OwnedFd,
    /// (st_dev, st_ino): one node per host inode.
    key: (u64, u64),
    /// The file type bits (S_IFMT) at lookup; an inode's type never changes.
    kind: u32,
    /// Lookups the guest has not forgotten.
    refs: u64,
}

struct Handle {
    fd: OwnedFd,
    /// Where READDIR is in an open directory.
    dir: Option<readdir::DirCursor>,
}

pub struct Server {
    proc_fd: OwnedFd,
    read_only: bool,
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(u64, u64), u64>,
    next_node: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// The device's DAX window, if it has one (see super::dax).
    window: Option<Arc<DaxWindow>>,
    /// Whether opened files' data goes through the guest's page cache.
    cache: FsCache,
}

/// What a request gets back: a reply (errno 0 with a body, or an errno),
/// or nothing at all (FORGET, BATCH_FORGET, INTERRUPT).
pub enum Answer {
    Reply(Vec<u8>),
    /// A reply whose first bytes are these (its header) and whose next
    /// `.1` bytes the [`GuestData`] already put in place: a READ straight
    /// into the guest's buffers.
    ReplyAfterData(Vec<u8>, usize),
    None,
}

type R = Result<Vec<u8>, i32>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("shared directory {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {0} is not a directory")]
    NotDir(std::path::PathBuf),
    #[error("opening /proc/self/fd for the shared directory")]
    Proc(#[source] std::io::Error),
}

impl Server {
    /// Serves the directory `root` (an O_PATH fd of it); `proc_fd` is an
    /// open /proc/self/fd directory of this process.
    pub fn new(root: OwnedFd, proc_fd: OwnedFd, read_only: bool) -> Result<Server, i32> {
        let st = sys::stat(root.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        let mut inodes = HashMap::new();
        let key = (st.st_dev, st.st_ino);
        inodes.insert(
            ROOT_ID,
            Inode {
                fd: root,
                key,
                kind: libc::S_IFDIR,
                refs: 1,
            },
        );
        Ok(Server {
            proc_fd,
            read_only,
            inodes,
            by_key: HashMap::from([(key, ROOT_ID)]),
            next_node: ROOT_ID + 1,
            handles: HashMap::new(),
            next_fh: 1,
            window: None,
            cache: FsCache::Auto,
        })
    }

    /// Opens `path` and `/proc/self/fd` (or takes `proc_fd`) and serves it.
    pub fn open(
        path: &Path,
        read_only: bool,
        proc_fd: Option<OwnedFd>,
    ) -> Result<Server, ServerError> {
        let open_err = |source| ServerError::Open {
            path: path.to_path_buf(),
            source,
        };
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        let proc_fd = match proc_fd {
            Some(fd) => fd,
            None => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open("/proc/self/fd")
                .map_err(ServerError::Proc)?
                .into(),
        };
        Server::new(root.into(), proc_fd, read_only).map_err(|e| {
            if e == libc::ENOTDIR {
                ServerError::NotDir(path.to_path_buf())
            } else {
                open_err(std::io::Error::from_raw_os_error(e))
            }
        })
    }

    /// Sets whether the guest caches file data (see [`FsCache`]); it
    /// applies to the files opened from then on.
    pub fn set_cache(&mut self, cache: FsCache) {
        self.cache = cache;
    }

    /// What OPEN and CREATE tell the guest about a file opened with the
    /// guest's `flags`: FOPEN_DIRECT_IO (no page cache: each read and
    /// write is a request, straight between the caller's buffer and the
    /// host file) or FOPEN_KEEP_CACHE (what the guest cached survives the
    /// open). Under [`FsCache::Auto`], a write-only open goes direct: its
    /// writes would otherwise be copied into the guest's page cache as
    /// well as sent, and no process can map it through that open (mmap
    /// needs a readable file), so nothing that needs the cache loses it.
    fn open_reply_flags(&self, flags: u32) -> u32 {
        let write_only = flags as i32 & libc::O_ACCMODE == libc::O_WRONLY;
        match self.cache {
            FsCache::Never => p::FOPEN_DIRECT_IO,
            FsCache::Auto if write_only => p::FOPEN_DIRECT_IO,
            FsCache::Auto | FsCache::Always => p::FOPEN_KEEP_CACHE,
        }
    }

    /// Gives the server the device's DAX window: INIT offers it and
    /// SETUPMAPPING maps files into it.
    pub fn set_window(&mut self, window: Arc<DaxWindow>) {
        self.window = Some(window);
    }

    /// Inodes the guest holds (the root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Open handles.
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }

    /// Answers one request; `max_reply` is the room in the guest's buffer.
    pub fn handle(&mut self, req: &[u8], max_reply: usize) -> Answer {
        self.handle_with(req, max_reply, None)
    }

    /// [`Server::handle`], with a READ's or WRITE's data in the guest's
    /// buffers `data` (then `req` ends with the READ or WRITE header).
    pub fn handle_with(
        &mut self,
        req: &[u8],
        max_reply: usize,
        data: Option<&mut dyn GuestData>,
    ) -> Answer {
        let Some((h, body)) = p::parse_header(req) else {
            return Answer::None;
        };
        let mut a = Args::new(body);
        let result = match h.opcode {
            p::FORGET => {
                if let Ok(n) = a.u64() {
                    self.forget(h.nodeid, n);
                }
                return Answer::None;
            }
            p::BATCH_FORGET => {
                self.batch_forget(&mut a);
                return Answer::None;
            }
            p::INTERRUPT => return Answer::None,
            p::INIT => self.init(&mut a),
            p::DESTROY => {
                self.destroy();
                Ok(Vec::new())
            }
            p::LOOKUP => self.lookup(h.nodeid, &mut a),
            p::GETATTR => self.getattr(h.nodeid, &mut a),
            p::SETATTR => self.setattr(h.nodeid, &mut a),
            p::READLINK => self.readlink(h.nodeid),
            p::SYMLINK => self.symlink(&h, &mut a),
            p::MKNOD => self.mknod(&h, &mut a),
            p::MKDIR => self.mkdir(&h, &mut a),
            p::UNLINK => self.unlink(h.nodeid, &mut a, 0),
            p::RMDIR => self.unlink(h.nodeid, &mut a, libc::AT_REMOVEDIR),
            p::RENAME => self.rename(h.nodeid, &mut a, false),
            p::RENAME2 => self.rename(h.nodeid, &mut a, true),
            p::LINK => self.link(h.nodeid, &mut a),
            p::OPEN => self.open_file(h.nodeid, &mut a, false),
            p::OPENDIR => self.open_file(h.nodeid, &mut a, true),
            p::CREATE => self.create(&h, &mut a),
            p::READ => match data {
                Some(d) => return self.read_into(&h, &mut a, max_reply, d),
                None => self.read(&mut a, max_reply),
            },
            p::WRITE => self.write(&mut a, data),
            p::RELEASE | p::RELEASEDIR => self.release(&mut a),
            // Nothing to do at close (no locks, no cache of the server's):
            // ENOSYS once, and the guest sends no more FLUSHes, two round
            // trips fewer per file a shell writes.
            p::FLUSH => Err(libc::ENOSYS),
            p::FSYNC | p::FSYNCDIR => self.fsync(&mut a),
            p::STATFS => self.statfs(h.nodeid),
            p::ACCESS => self.access(h.nodeid, &mut a),
            p::FALLOCATE => self.fallocate(&mut a),
            p::LSEEK => self.lseek(&mut a),
            p::READDIR => self.readdir(&mut a, max_reply, false),
            p::READDIRPLUS => self.readdir(&mut a, max_reply, true),
            p::SETUPMAPPING => self.setup_mapping(h.nodeid, &mut a),
            p::REMOVEMAPPING => self.remove_mapping(&mut a),
            _ => Err(libc::ENOSYS),
        };
        let reply = match result {
            Ok(body) if p::OUT_HEADER_LEN + body.len() <= max_reply => p::reply(h.unique, 0, &body),
            Ok(_) => p::reply(h.unique, libc::ERANGE, &[]),
            Err(e) => p::reply(h.unique, e, &[]),
        };
        Answer::Reply(reply)
    }

    fn init(&mut self, a: &mut Args<'_>) -> R {
        let major = a.u32()?;
        let minor = a.u32()?;
        let readahead = a.u32()?;
        let flags = a.u32()?;
        if major != p::KERNEL_VERSION {
            return Err(libc::EPROTO);
        }
        // ATOMIC_O_TRUNC: an open with O_TRUNC truncates here (one
        // request, not OPEN then SETATTR). MAX_PAGES: requests of up to
        // MAX_IO (the guest splits at its queue's size too).
        // AUTO_INVAL_DATA: files are opened with FOPEN_KEEP_CACHE, so the
        // guest's cached data outlives a close; a read refreshes the
        // attributes once they are TIMEOUT old, and a changed mtime or
        // size drops the cache: a host change is seen within TIMEOUT.
        let mut want = p::INIT_ASYNC_READ
            | p::INIT_ATOMIC_O_TRUNC
            | p::INIT_AUTO_INVAL_DATA
            | p::INIT_BIG_WRITES
            | p::INIT_DO_READDIRPLUS
            | p::INIT_PARALLEL_DIROPS
            | p::INIT_MAX_PAGES;
        // MAP_ALIGNMENT: DAX mappings need only be page-aligned (the guest
        // maps 2 MiB chunks anyway).
        let alignment = if self.window.is_some() {
            want |= p::INIT_MAP_ALIGNMENT;
            MAP_ALIGNMENT_SHIFT
        } else {
            0
        };
        let mut o = Out::default();
        o.u32(p::KERNEL_VERSION)
            .u32(minor.min(p::KERNEL_MINOR))
            .u32(readahead.min(MAX_IO as u32))
            .u32(flags & want)
            .u16(16) // max_background
            .u16(12) // congestion_threshold
            .u32(MAX_IO as u32) // max_write
            .u32(1) // time_gran: nanoseconds
            .u16((MAX_IO / 4096) as u16) // max_pages
            .u16(alignment)
            .u32(0)
            .zeros(28);
        Ok(o.0)
    }

    fn inode(&self, node: u64) -> Result<&Inode, i32> {
        self.inodes.get(&node).ok_or(libc::EBADF)
    }

    fn fd(&self, node: u64) -> Result<BorrowedFd<'_>, i32> {
        Ok(self.inode(node)?.fd.as_fd())
    }

    fn dir_fd(&self, node: u64) -> Result<BorrowedFd<'_>, i32> {
        let i = self.inode(node)?;
        if i.kind != libc::S_IFDIR {
            return Err(libc::ENOTDIR);
        }
        Ok(i.fd.as_fd())
    }

    fn handle_fd(&self, fh: u64) -> Result<BorrowedFd<'_>, i32> {
        self.handles
            .get(&fh)
            .map(|h| h.fd.as_fd())
            .ok_or(libc::EBADF)
    }

    fn writable(&self) -> Result<(), i32> {
        if self.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    /// Finds `name` in `parent` and counts one lookup of it; returns the
    /// node and its attributes.
    fn lookup_name(&mut self, parent: u64, name: &[u8]) -> Result<(u64, libc::stat64), i32> {
        if !p::valid_name(name) {
            return Err(if name.len() > p::NAME_MAX {
                libc::ENAMETOOLONG
            } else {
                libc::EINVAL
            });
        }
        let fd = sys::open_beneath(self.dir_fd(parent)?, name, libc::O_PATH, 0)?;
        let st = sys::stat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        if let Some(&node) = self.by_key.get(&key) {
            if let Some(i) = self.inodes.get_mut(&node) {
                i.refs = i.refs.saturating_add(1);
                return Ok((node, st));
            }
        }
        if self.inodes.len() >= MAX_INODES {
            return Err(libc::ENFILE);
        }
        let node = self.next_node;
        self.next_node += 1;
        self.inodes.insert(
            node,
            Inode {
                fd,
                key,
                kind: st.st_mode & libc::S_IFMT,
                refs: 1,
            },
        );
        self.by_key.insert(key, node);
        Ok((node, st))
    }

    fn entry(&mut self, parent: u64, name: &[u8]) -> R {
        let (node, st) = self.lookup_name(parent, name)?;
        let mut o = Out::default();
        o.entry(node, &st, TIMEOUT);
        Ok(o.0)
    }

    fn lookup(&mut self, parent: u64, a: &mut Args<'_>) -> R {
        let name = a.cstr(p::NAME_MAX)?;
        match self.entry(parent, name) {
            // A negative entry (node 0) the guest may keep as long as a
            // positive one: a name looked for again and again (PATH, a
            // library search) costs one request per TIMEOUT.
            Err(libc::ENOENT) => {
                let mut o = Out::default();
                o.u64(0)
                    .u64(0)
                    .u64(TIMEOUT)
                    .u64(0)
                    .u32(0)
                    .u32(0)
                    .zeros(p::ATTR_LEN);
                Ok(o.0)
            }
            r => r,
        }
    }

    fn forget(&mut self, node: u64, n: u64) {
        if node == ROOT_ID {
            return;
        }
        let Some(i) = self.inodes.get_mut(&node) else {
            return;
        };
        i.refs = i.refs.saturating_sub(n);
        if i.refs == 0 {
            let key = i.key;
            self.inodes.remove(&node);
            if self.by_key.get(&key) == Some(&node) {
                self.by_key.remove(&key);
            }
        }
    }

    fn batch_forget(&mut self, a: &mut Args<'_>) {
        let Ok(count) = a.u32() else { return };
        if a.skip(4).is_err() {
            return;
        }
        for _ in 0..count {
            let (Ok(node), Ok(n)) = (a.u64(), a.u64()) else {
                return;
            };
            self.forget(node, n);
        }
    }

    fn destroy(&mut self) {
        if let Some(w) = &self.window {
            w.clear();
        }
        self.handles.clear();
        self.inodes.retain(|&n, _| n == ROOT_ID);
        self.by_key.retain(|_, &mut n| n == ROOT_ID);
    }

    fn attr_reply(&self, node: u64, st: &libc::stat64) -> Vec<u8> {
        let mut o = Out::default();
        o.u64(TIMEOUT).u32(0).u32(0).attr(node, st);
        o.0
    }

    fn getattr(&mut self, node: u64, _a: &mut Args<'_>) -> R {
        let st = sys::stat(self.fd(node)?)?;
        Ok(self.attr_reply(node, &st))
    }

    fn setattr(&mut self, node: u64, a: &mut Args<'_>) -> R {
        let valid = a.u32()?;
        a.skip(4)?;
        let fh = a.u64()?;
        let size = a.u64()?;
        a.skip(8)?; // lock_owner
        let atime = a.u64()?;
        let mtime = a.u64()?;
        a.skip(8)?; // ctime
        let atimensec = a.u32()?;
        let mtimensec = a.u32()?;
        a.skip(4)?;
        let mode = a.u32()?;
        a.skip(4)?;
        let uid = a.u32()?;
        let gid = a.u32()?;
        self.writable()?;
        let inode = self.inode(node)?;
        let kind = inode.kind;
        let fd = inode.fd.as_fd();
        let file_or_dir = kind == libc::S_IFREG || kind == libc::S_IFDIR;
        if valid & (p::FATTR_UID | p::FATTR_GID) != 0 {
            let u = if valid & p::FATTR_UID != 0 {
                uid
            } else {
                u32::MAX
            };
            let g = if valid & p::FATTR_GID != 0 {
                gid
            } else {
                u32::MAX
            };
            sys::chown(fd, u, g)?;
        }
        if valid & p::FATTR_MODE != 0 {
            if !file_or_dir {
                return Err(libc::EPERM);
            }
            sys::chmod(self.proc_fd.as_fd(), fd, safe_mode(mode, kind))?;
        }
        if valid & p::FATTR_SIZE != 0 {
            if kind != libc::S_IFREG {
                return Err(libc::EINVAL);
            }
            if valid & p::FATTR_FH != 0 {
                sys::ftruncate(self.handle_fd(fh)?, size)?;
            } else {
                let f = sys::reopen(self.proc_fd.as_fd(), fd, libc::O_WRONLY)?;
                sys::ftruncate(f.as_fd(), size)?;
            }
        }
        if valid & (p::FATTR_ATIME | p::FATTR_MTIME) != 0 {
            if !file_or_dir {
                return Err(libc::EPERM);
            }
            let t = |set, now, sec: u64, nsec: u32| {
                if valid & now != 0 {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_NOW,
                    }
                } else if valid & set != 0 {
                    libc::timespec {
                        tv_sec: sec as i64,
                        tv_nsec: i64::from(nsec.min(999_999_999)),
                    }
                } else {
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    }
                }
            };
            let times = [
                t(p::FATTR_ATIME, p::FATTR_ATIME_NOW, atime, atimensec),
                t(p::FATTR_MTIME, p::FATTR_MTIME_NOW, mtime, mtimensec),
            ];
            sys::utimes(self.proc_fd.as_fd(), fd, &times)?;
        }
        let st = sys::stat(fd)?;
        Ok(self.attr_reply(node, &st))
    }

    fn readlink(&mut self, node: u64) -> R {
        let i = self.inode(node)?;
        if i.kind != libc::S_IFLNK {
            return Err(libc::EINVAL);
        }
        sys::readlink(i.fd.as_fd())
    }

    /// After the guest made `name` in `parent`: gives it the caller's ids
    /// (the parent's group where the parent is set-group-ID), then answers
    /// with its entry.
    fn made(&mut self, h: &p::InHeader, parent: u64, name: &[u8]) -> R {
        let (node, _) = self.lookup_name(parent, name)?;
        let parent_mode = sys::stat(self.fd(parent)?).map(|s| s.st_mode).unwrap_or(0);
        let gid = if parent_mode & libc::S_ISGID != 0 {
            u32::MAX
        } else {
            h.gid
        };
        // Without CAP_CHOWN (a jailed server) the file stays the server's.
        let fd = self.fd(node)?;
        let _ = sys::chown(fd, h.uid, gid);
        let st = sys::stat(fd)?;
        let mut o = Out::default();
        o.entry(node, &st, TIMEOUT);
        Ok(o.0)
    }

    fn new_name<'a>(&self, a: &mut Args<'a>) -> Result<&'a [u8], i32> {
        let name = a.cstr(p::NAME_MAX)?;
        if !p::valid_name(name) {
            return Err(libc::EINVAL);
        }
        Ok(name)
    }

    fn symlink(&mut self, h: &p::InHeader, a: &mut Args<'_>) -> R {
        let name = self.new_name(a)?;
        let target = a.cstr(p::PATH_MAX)?;
        self.writable()?;
        if target.is_empty() {
            return Err(libc::ENOENT);
        }
        sys::symlinkat(target, self.dir_fd(h.nodeid)?, name)?;
        self.made(h, h.nodeid, name)
    }

    fn mknod(&mut self, h: &p::InHeader, a: &mut Args<'_>) -> R {
        let mode = a.u32()?;
        let _rdev = a.u32()?;
        let umask = a.u32()?;
        a.skip(4)?;
        let name = self.new_name(a)?;
        self.writable()?;
        let kind = mode & libc::S_IFMT;
        // No device nodes: a host user could open one.
        if ![libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK].contains(&kind) {
            return Err(libc::EPERM);
        }
        let mode = kind | safe_mode(mode & !umask, kind);
        sys::mknodat(self.dir_fd(h.nodeid)?, name, mode, 0)?;
        self.made(h, h.nodeid, name)
    }

    fn mkdir(&mut self, h: &p::InHeader, a: &mut Args<'_>) -> R {
        let mode = a.u32()?;
        let umask = a.u32()?;
        let name = self.new_name(a)?;
        self.writable()?;
        sys::mkdirat(
            self.dir_fd(h.nodeid)?,
            name,
            safe_mode(mode & !umask, libc::S_IFDIR),
        )?;
        self.made(h, h.nodeid, name)
    }

    fn unlink(&mut self, parent: u64, a: &mut Args<'_>, flags: i32) -> R {
        let name = self.new_name(a)?;
        self.writable()?;
        sys::unlinkat(self.dir_fd(parent)?, name, flags)?;
        Ok(Vec::new())
    }

    fn rename(&mut self, parent: u64, a: &mut Args<'_>, two: bool) -> R {
        let newdir = a.u64()?;
        let flags = if two {
            let f = a.u32()?;
            a.skip(4)?;
            f
        } else {
            0
        };
        let old = self.new_name(a)?;
        let new = self.new_name(a)?;
        self.writable()?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(libc::EINVAL);
        }
        sys::renameat2(self.dir_fd(parent)?, old, self.dir_fd(newdir)?, new, flags)?;
        Ok(Vec::new())
    }

    fn link(&mut self, newparent: u64, a: &mut Args<'_>) -> R {
        let old = a.u64()?;
        let name = self.new_name(a)?;
        self.writable()?;
        let i = self.inode(old)?;
        if i.kind == libc::S_IFDIR {
            return Err(libc::EPERM);
        }
        sys::link(
            self.proc_fd.as_fd(),
            i.fd.as_fd(),
            self.dir_fd(newparent)?,
            name,
        )?;
        self.entry(newparent, name)
    }

    /// Open flags the guest may ask for; EROFS for writing a read-only share.
    fn open_flags(&self, flags: u32) -> Result<i32, i32> {
        let flags = flags as i32;
        let allowed = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_NONBLOCK
            | libc::O_DSYNC
            | libc::O_SYNC
            | libc::O_NOATIME
            | libc::O_DIRECT;
        let flags = flags & allowed;
        if self.read_only
            && (flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0)
        {
            return Err(libc::EROFS);
        }
        // O_NOATIME needs the owner's ids or CAP_FOWNER; it is only a hint.
        Ok(flags & !libc::O_NOATIME)
    }

    fn add_handle(&mut self, fd: OwnedFd) -> Result<u64, i32> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(libc::ENFILE);
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { fd, dir: None });
        Ok(fh)
    }

    fn open_file(&mut self, node: u64, a: &mut Args<'_>, dir: bool) -> R {
        let flags = a.u32()?;
        let i = self.inode(node)?;
        let want = if dir { libc::S_IFDIR } else { libc::S_IFREG };
        if i.kind != want {
            return Err(if dir { libc::ENOTDIR } else { libc::EINVAL });
        }
        let oflags = if dir {
            libc::O_RDONLY | libc::O_DIRECTORY
        } else {
            self.open_flags(flags)?
        };
        let fd = sys::reopen(self.proc_fd.as_fd(), i.fd.as_fd(), oflags)?;
        let fh = self.add_handle(fd)?;
        let mut o = Out::default();
        o.u64(fh)
            .u32(if dir { 0 } else { self.open_reply_flags(flags) })
            .u32(0);
        Ok(o.0)
    }

    fn create(&mut self, h: &p::InHeader, a: &mut Args<'_>) -> R {
        let flags = a.u32()?;
        let mode = a.u32()?;
        let umask = a.u32()?;
        a.skip(4)?;
        let name = self.new_name(a)?;
        self.writable()?;
        let oflags = self.open_flags(flags)? | libc::O_CREAT | (flags as i32 & libc::O_EXCL);
        let mode = safe_mode(mode & !umask, libc::S_IFREG);
        let fd = sys::open_beneath(self.dir_fd(h.nodeid)?, name, oflags, mode)?;
        let st = sys::stat(fd.as_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(libc::EISDIR);
        }
        let mut entry = self.made(h, h.nodeid, name)?;
        let fh = match self.add_handle(fd) {
            Ok(fh) => fh,
            Err(e) => {
                let node = u64::from_le_bytes(entry[..8].try_into().map_err(|_| libc::EIO)?);
                self.forget(node, 1);
                return Err(e);
            }
        };
        let mut o = Out(std::mem::take(&mut entry));
        o.u64(fh).u32(self.open_reply_flags(flags)).u32(0);
        Ok(o.0)
    }

    fn release(&mut self, a: &mut Args<'_>) -> R {
        let fh = a.u64()?;
        self.handles.remove(&fh);
        Ok(Vec::new())
    }

    fn statfs(&mut self, node: u64) -> R {
        let st = sys::statfs(self.fd(node)?)?;
        let mut o = Out::default();
        o.u64(st.f_blocks)
            .u64(st.f_bfree)
            .u64(st.f_bavail)
            .u64(st.f_files)
            .u64(st.f_ffree)
            .u32(st.f_bsize as u32)
            .u32(st.f_namelen as u32)
            .u32(st.f_frsize as u32)
            .u32(0)
            .zeros(24);
        Ok(o.0)
    }

    fn access(&mut self, node: u64, a: &mut Args<'_>) -> R {
        let mask = a.u32()? as i32;
        self.inode(node)?;
        if mask & libc::W_OK != 0 {
            self.writable()?;
        }
        Ok(Vec::new())
    }
}

/// The permission bits of a mode the guest asks for: no set-user-ID, and
/// no set-group-ID except on directories (where it only passes the group on).
fn safe_mode(mode: u32, kind: u32) -> u32 {
    let mut m = mode & 0o7777 & !libc::S_ISUID;
    if kind != libc::S_IFDIR {
        m &= !libc::S_ISGID;
    }
    m
}

impl AsRawFd for Handle {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

use std::os::unix::fs::OpenOptionsExt;
