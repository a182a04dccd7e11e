//! Guest buffers as host iovecs: devices hand the guest's own memory to
//! readv/preadv/pwritev, so data moves with one system call and no copy of
//! the device's own.

use std::io;

use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::queue_worker::Chain;

/// The guest buffers of `chain` that the device writes (`writable`) or reads,
/// as (address, length) after skipping `skip` bytes and up to `take` bytes.
/// The chain must already have been checked to lie in guest memory (its
/// Reader or Writer exists); a looping chain repeats descriptors as they do.
pub fn segments(
    chain: &Chain<'_>,
    writable: bool,
    mut skip: usize,
    mut take: usize,
) -> Vec<(GuestAddress, usize)> {
    let mut out = Vec::new();
    for d in chain.clone().filter(|d| d.is_write_only() == writable) {
        if take == 0 {
            break;
        }
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        out.push((d.addr().unchecked_add(skip as u64), n));
        take -= n;
        skip = 0;
    }
    out
}

/// iovecs over guest memory, valid while this lives (the guards keep the
/// memory mapped and checked).
pub struct GuestIovecs {
    iovs: Vec<libc::iovec>,
    _guards: Vec<PtrGuardMut>,
}

impl GuestIovecs {
    /// The host side of `segs`; `access` is what the host does to guest
    /// memory (Write to fill it, Read to send it). Fails when a segment is
    /// outside guest memory.
    pub fn new(
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, usize)],
        access: Permissions,
    ) -> io::Result<GuestIovecs> {
        let mut guards = Vec::with_capacity(segs.len());
        let mut iovs = Vec::with_capacity(segs.len());
        for &(addr, n) in segs {
            for slice in mem.get_slices(addr, n, access).map_err(io::Error::other)? {
                let g = slice.map_err(io::Error::other)?.ptr_guard_mut();
                iovs.push(libc::iovec {
                    iov_base: g.as_ptr().cast(),
                    iov_len: g.len(),
                });
                guards.push(g);
            }
        }
        Ok(GuestIovecs {
            iovs,
            _guards: guards,
        })
    }

    pub fn len(&self) -> usize {
        self.iovs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.iovs.is_empty()
    }

    /// The iovecs from index `from` on, at most IOV_MAX of them.
    fn from(&self, from: usize) -> (*const libc::iovec, libc::c_int) {
        let rest = &self.iovs[from.min(self.iovs.len())..];
        (rest.as_ptr(), rest.len().min(1024) as libc::c_int)
    }

    /// Runs `op`, a readv-style call given the iovecs from index `from` on
    /// (at most IOV_MAX of them), again while a signal interrupts it;
    /// returns the bytes it moved.
    pub fn call(
        &self,
        from: usize,
        op: impl Fn(*const libc::iovec, libc::c_int) -> isize,
    ) -> io::Result<usize> {
        let (ptr, count) = self.from(from);
        loop {
            let r = op(ptr, count);
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Skips `r` transferred bytes starting at index `*i` (a short transfer
    /// continues where it stopped).
    pub fn advance(&mut self, i: &mut usize, mut r: usize) {
        while r > 0 && *i < self.iovs.len() {
            let iov = &mut self.iovs[*i];
            if r >= iov.iov_len {
                r -= iov.iov_len;
                *i += 1;
            } else {
                // SAFETY: moves within the same buffer, `r` < its length.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(r).cast() };
                iov.iov_len -= r;
                r = 0;
            }
        }
    }
}

/// Moves the bytes of `iovs` between guest memory and the file `fd` at
/// `off` with preadv (`write` false: the file is read into guest memory)
/// or pwritev, as many calls as short transfers need; returns the bytes
/// moved, fewer than the iovecs hold only at the end of the file (a read)
/// or when a write moves nothing.
pub fn transfer(
    fd: std::os::fd::RawFd,
    iovs: &mut GuestIovecs,
    mut off: u64,
    write: bool,
) -> io::Result<usize> {
    let mut i = 0;
    let mut done = 0;
    while i < iovs.len() {
        let at =
            libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: every iovec points into guest memory that `iovs` keeps
        // mapped, with the length vm-memory checked for it; `fd` is the
        // caller's open file.
        let r = iovs.call(i, |ptr, count| unsafe {
            if write {
                libc::pwritev(fd, ptr, count, at)
            } else {
                libc::preadv(fd, ptr, count, at)
            }
        })?;
        if r == 0 {
            break;
        }
        off += r as u64;
        done += r;
        iovs.advance(&mut i, r);
    }
    Ok(done)
}
