//! FUSE_SETUPMAPPING and FUSE_REMOVEMAPPING: host file ranges in and out of
//! the device's DAX window (see super::super::dax). The guest names a file
//! by its node, so only inodes this server handed out can be mapped, and
//! only regular files; a read-only share maps nothing writable.

use std::os::fd::AsFd;

use super::super::protocol::{self as p, Args};
use super::{R, Server};

impl Server {
    pub(super) fn setup_mapping(&mut self, node: u64, a: &mut Args<'_>) -> R {
        let _fh = a.u64()?; // the guest sends -1: the node names the file
        let foffset = a.u64()?;
        let len = a.u64()?;
        let flags = a.u64()?;
        let moffset = a.u64()?;
        let window = self.window.clone().ok_or(libc::ENOSYS)?;
        let writable = flags & p::SETUPMAPPING_FLAG_WRITE != 0;
        if writable {
            self.writable()?;
        }
        let i = self.inode(node)?;
        if i.kind != libc::S_IFREG {
            return Err(libc::EINVAL);
        }
        let mode = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        // The inode the server already holds, opened for this mapping only:
        // the mapping keeps the file, the descriptor goes at once.
        let file = super::sys::reopen(self.proc_fd.as_fd(), i.fd.as_fd(), mode)?;
        window.map(file.as_fd(), foffset, moffset, len, writable)?;
        Ok(Vec::new())
    }

    pub(super) fn remove_mapping(&mut self, a: &mut Args<'_>) -> R {
        let count = a.u32()?;
        let window = self.window.clone().ok_or(libc::ENOSYS)?;
        // Each entry is read from the request: a count larger than the
        // request holds ends at its end with EINVAL.
        for _ in 0..count {
            let moffset = a.u64()?;
            let len = a.u64()?;
            window.unmap(moffset, len)?;
        }
        Ok(Vec::new())
    }
}
