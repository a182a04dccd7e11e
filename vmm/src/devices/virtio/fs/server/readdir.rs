//! READDIR and READDIRPLUS. The guest asks for entries "after offset X",
//! X being the cookie of the last entry it consumed; it often consumes only
//! part of a reply (its caller's buffer filled). A seek to an old cookie
//! is not safe while entries are being removed (`rm -rf` unlinks what it
//! read between its reads): on file systems whose cookies count entries
//! (tmpfs before Linux 6.6) it skips live entries. So each open directory
//! keeps the entries it sent and read ahead, and a request for a cookie
//! among them carries on from there without a seek; only another cookie
//! (a rewind, a seekdir) seeks.

use std::collections::VecDeque;
use std::os::fd::AsFd;

use super::super::protocol::{self as p, Args, Out};
use super::super::sys;
use super::{Handle, MAX_DIR, R, Server, TIMEOUT};

/// One directory entry as getdents64 gave it.
struct Entry {
    ino: u64,
    off: u64,
    typ: u8,
    name: Vec<u8>,
}

/// An open directory's reading position: the entries after cookie
/// `start`, read from the fd (which stands after the last of them) and
/// not yet known to be consumed.
#[derive(Default)]
pub(super) struct DirCursor {
    start: u64,
    queue: VecDeque<Entry>,
    /// getdents64 found the end.
    eof: bool,
}

impl Server {
    pub(super) fn readdir(&mut self, a: &mut Args<'_>, max_reply: usize, plus: bool) -> R {
        let fh = a.u64()?;
        let off = a.u64()?;
        let size = a.u32()? as usize;
        let max = size
            .min(MAX_DIR)
            .min(max_reply.saturating_sub(p::OUT_HEADER_LEN));
        // Out of the table while it is read (lookups below borrow the
        // server), back in whatever happens.
        let mut h = self.handles.remove(&fh).ok_or(libc::EBADF)?;
        let r = self.read_dir(&mut h, off, max, plus);
        self.handles.insert(fh, h);
        r
    }

    fn read_dir(&mut self, h: &mut Handle, off: u64, max: usize, plus: bool) -> R {
        let fd = h.fd.as_fd();
        let cur = match &mut h.dir {
            Some(c) => c,
            None => {
                sys::lseek(fd, 0, libc::SEEK_SET as u32)?;
                h.dir.insert(DirCursor::default())
            }
        };
        if off != cur.start {
            match cur.queue.iter().position(|e| e.off == off) {
                Some(i) => {
                    cur.queue.drain(..=i);
                    cur.start = off;
                }
                None => {
                    sys::lseek(fd, off, libc::SEEK_SET as u32)?;
                    *cur = DirCursor {
                        start: off,
                        ..DirCursor::default()
                    };
                }
            }
        }
        let dir_node = self.node_of_dir(fd);
        let mut raw = vec![0u8; max.clamp(512, MAX_DIR)];
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            if i == cur.queue.len() {
                if cur.eof {
                    break;
                }
                let n = sys::getdents(fd, &mut raw)?;
                let before = cur.queue.len();
                cur.queue.extend(sys::entries(&raw[..n]).map(|e| Entry {
                    ino: e.ino,
                    off: e.off,
                    typ: e.typ,
                    name: e.name.to_vec(),
                }));
                if cur.queue.len() == before {
                    cur.eof = true;
                    break;
                }
                continue;
            }
            let e = &cur.queue[i];
            let typ = u32::from(e.typ);
            if !plus {
                if !p::push_dirent(&mut out, max, e.ino, e.off, typ, &e.name) {
                    break;
                }
                i += 1;
                continue;
            }
            let need = p::ENTRY_LEN + ((24 + e.name.len() + 7) & !7);
            if out.len() + need > max {
                break;
            }
            let special = e.name == b"." || e.name == b"..";
            let entry = match (special, dir_node) {
                (false, Some(dir)) => self.lookup_name(dir, &e.name).ok(),
                _ => None,
            };
            let mut o = Out(std::mem::take(&mut out));
            match entry {
                Some((node, st)) => o.entry(node, &st, TIMEOUT),
                // Node 0: the guest looks it up itself if it wants it.
                // SAFETY: stat64 is plain data; zeros are a valid value.
                None => o.entry(0, &unsafe { std::mem::zeroed() }, 0),
            };
            out = o.0;
            p::push_dirent(&mut out, max, e.ino, e.off, typ, &e.name);
            i += 1;
        }
        Ok(out)
    }

    /// The directory node an open directory is.
    fn node_of_dir(&self, fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
        let st = sys::stat(fd).ok()?;
        self.by_key.get(&(st.st_dev, st.st_ino)).copied()
    }
}
