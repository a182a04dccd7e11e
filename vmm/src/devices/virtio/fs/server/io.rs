//! READ and WRITE (their data in the request and reply, or in the guest's
//! buffers through a [`GuestData`]), FSYNC, FALLOCATE and LSEEK on an open
//! file.

use std::os::fd::BorrowedFd;

use super::super::protocol::{self as p, Args, Out};
use super::super::sys;
use super::{Answer, MAX_IO, R, Server};

/// The data of a READ or WRITE where the guest has it, in its own
/// buffers: the server hands the file to it, so the bytes move between
/// the file and guest memory with one call and no copy of the server's.
/// (Without one, [`Server::handle`], the data is inside the request and
/// the reply.)
pub trait GuestData {
    /// Writes the first `len` bytes of the request's data to `fd` at
    /// `off`; the bytes written. EINVAL when the request holds fewer.
    fn write_to(&mut self, fd: BorrowedFd<'_>, off: u64, len: usize) -> Result<usize, i32>;
    /// Reads up to `len` bytes of `fd` at `off` into the reply's buffers,
    /// after the reply's header; the bytes read (fewer at the end of the
    /// file, and never more than the buffers hold).
    fn read_from(&mut self, fd: BorrowedFd<'_>, off: u64, len: usize) -> Result<usize, i32>;
}

impl Server {
    pub(super) fn read(&mut self, a: &mut Args<'_>, max_reply: usize) -> R {
        let fh = a.u64()?;
        let off = a.u64()?;
        let size = a.u32()? as usize;
        let n = size
            .min(MAX_IO)
            .min(max_reply.saturating_sub(p::OUT_HEADER_LEN));
        let fd = self.handle_fd(fh)?;
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            let r = sys::pread(fd, &mut buf[got..], off.saturating_add(got as u64))?;
            if r == 0 {
                break;
            }
            got += r;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// A READ whose data goes straight into the guest's buffers.
    pub(super) fn read_into(
        &mut self,
        h: &p::InHeader,
        a: &mut Args<'_>,
        max_reply: usize,
        data: &mut dyn GuestData,
    ) -> Answer {
        let r = (|| {
            let fh = a.u64()?;
            let off = a.u64()?;
            let size = a.u32()? as usize;
            let n = size
                .min(MAX_IO)
                .min(max_reply.saturating_sub(p::OUT_HEADER_LEN));
            data.read_from(self.handle_fd(fh)?, off, n)
        })();
        match r {
            Ok(n) => Answer::ReplyAfterData(p::reply_header(h.unique, 0, n), n),
            Err(e) => Answer::Reply(p::reply(h.unique, e, &[])),
        }
    }

    pub(super) fn write(&mut self, a: &mut Args<'_>, guest: Option<&mut dyn GuestData>) -> R {
        let fh = a.u64()?;
        let off = a.u64()?;
        let size = a.u32()? as usize;
        a.skip(4 + 8 + 4 + 4)?;
        let data = a.rest();
        if size > MAX_IO || (guest.is_none() && size > data.len()) {
            return Err(libc::EINVAL);
        }
        self.writable()?;
        let fd = self.handle_fd(fh)?;
        let done = match guest {
            Some(g) => g.write_to(fd, off, size)?,
            None => {
                let mut done = 0;
                while done < size {
                    let r = sys::pwrite(fd, &data[done..size], off.saturating_add(done as u64))?;
                    if r == 0 {
                        break;
                    }
                    done += r;
                }
                done
            }
        };
        let mut o = Out::default();
        o.u32(done as u32).u32(0);
        Ok(o.0)
    }

    pub(super) fn fsync(&mut self, a: &mut Args<'_>) -> R {
        let fh = a.u64()?;
        let flags = a.u32()?;
        sys::fsync(self.handle_fd(fh)?, flags & 1 != 0)?;
        Ok(Vec::new())
    }

    pub(super) fn fallocate(&mut self, a: &mut Args<'_>) -> R {
        let fh = a.u64()?;
        let off = a.u64()?;
        let len = a.u64()?;
        let mode = a.u32()?;
        self.writable()?;
        sys::fallocate(self.handle_fd(fh)?, mode, off, len)?;
        Ok(Vec::new())
    }

    pub(super) fn lseek(&mut self, a: &mut Args<'_>) -> R {
        let fh = a.u64()?;
        let off = a.u64()?;
        let whence = a.u32()?;
        if ![
            libc::SEEK_SET,
            libc::SEEK_CUR,
            libc::SEEK_END,
            libc::SEEK_DATA,
            libc::SEEK_HOLE,
        ]
        .contains(&(whence as i32))
        {
            return Err(libc::EINVAL);
        }
        let r = sys::lseek(self.handle_fd(fh)?, off, whence)?;
        let mut o = Out::default();
        o.u64(r);
        Ok(o.0)
    }
}
