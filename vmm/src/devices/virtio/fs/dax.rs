//! The DAX cache window of a virtio-fs device (virtio 1.2, 5.11.5, shared
//! memory region 0): a stretch of guest-physical space, outside RAM and
//! the MMIO gap, where the server maps ranges of host files on the guest's
//! FUSE_SETUPMAPPING and unmaps them on FUSE_REMOVEMAPPING. The guest then
//! reads and writes those files in place (its page cache is bypassed, and
//! nothing is copied through a queue).
//!
//! On the host the window is one reservation of address space, PROT_NONE
//! and MAP_NORESERVE (no memory until a file is mapped), given to KVM as a
//! memory slot. A mapping replaces part of it with the file (MAP_FIXED |
//! MAP_SHARED), and a removal puts PROT_NONE back: KVM follows both
//! through its MMU notifier. KVM cannot resolve a guest access to a part
//! of the window that is not mapped, or to a mapped page past the end of a
//! file the host truncated meanwhile. What the guest sees then is not
//! settled: hull-vmm does not panic, but in the one check made (a file
//! truncated by the host after the guest mapped it) the VM hung instead of
//! stopping with an error (docs/volumes.md). DAX is off by default.
//!
//! Everything the guest sends is checked here: offsets and lengths must be
//! page-aligned and lie inside the window.

use std::os::fd::{AsRawFd, BorrowedFd};

use crate::kvm::memory::{ANON_NORESERVE, huge_aligned_mapping};

/// log2 of the alignment of offsets and lengths in SETUPMAPPING and
/// REMOVEMAPPING (INIT's map_alignment): the host page.
pub const MAP_ALIGNMENT_SHIFT: u16 = 12;
const ALIGN: u64 = 1 << MAP_ALIGNMENT_SHIFT;
/// The guest maps the window in chunks of this size (fs/fuse/dax.c): the
/// window's length is a multiple of it.
pub const CHUNK: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DaxError {
    #[error("a DAX window of {0} bytes is not a positive multiple of 2 MiB")]
    Size(u64),
    #[error("reserving {len} bytes of address space for the DAX window")]
    Reserve {
        len: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One device's window: the host reservation and where the guest sees it.
pub struct DaxWindow {
    /// The reservation's host address (a usize: the window is shared
    /// between the device and its server thread).
    host: usize,
    len: u64,
    gpa: u64,
}

impl DaxWindow {
    /// Reserves `len` bytes of host address space for a window the guest
    /// sees at guest-physical `gpa`.
    pub fn new(gpa: u64, len: u64) -> Result<DaxWindow, DaxError> {
        if len == 0 || !len.is_multiple_of(CHUNK) || !gpa.is_multiple_of(CHUNK) {
            return Err(DaxError::Size(len));
        }
        // The window starts on a 2 MiB boundary of the host's address
        // space, as it does in the guest's, so a host file in huge pages (a
        // tmpfs mounted huge=always) reaches the guest 2 MiB at a time
        // instead of in 4 KiB nested faults.
        let p = usize::try_from(len)
            .ok()
            .and_then(|size| huge_aligned_mapping(gpa, size, libc::PROT_NONE, ANON_NORESERVE))
            .ok_or(DaxError::Size(len))?
            .map_err(|source| DaxError::Reserve { len, source })?;
        Ok(DaxWindow {
            host: p as usize,
            len,
            gpa,
        })
    }

    /// Where the guest sees the window, and its length.
    pub fn region(&self) -> (u64, u64) {
        (self.gpa, self.len)
    }

    /// The reservation's host address (for the KVM memory slot).
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// The host address of `[off, off + len)` of the window, if that range
    /// is page-aligned, not empty and inside the window.
    fn range(&self, off: u64, len: u64) -> Result<*mut libc::c_void, i32> {
        let end = off.checked_add(len).ok_or(libc::EINVAL)?;
        if len == 0 || !off.is_multiple_of(ALIGN) || !len.is_multiple_of(ALIGN) || end > self.len {
            return Err(libc::EINVAL);
        }
        Ok((self.host + off as usize) as *mut libc::c_void)
    }

    /// Maps `len` bytes of `file` from `foffset` at `moffset` in the window,
    /// writable or read-only.
    pub fn map(
        &self,
        file: BorrowedFd<'_>,
        foffset: u64,
        moffset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), i32> {
        let at = self.range(moffset, len)?;
        if !foffset.is_multiple_of(ALIGN) || foffset.checked_add(len).is_none() {
            return Err(libc::EINVAL);
        }
        let foff = libc::off_t::try_from(foffset).map_err(|_| libc::EINVAL)?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: `at..at + len` lies inside the window's reservation (checked
        // by `range`), which this process owns and nothing but the guest (via
        // KVM) reads; MAP_FIXED replaces only those pages.
        let p = unsafe {
            libc::mmap(
                at,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                foff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(errno(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Puts `[moffset, moffset + len)` of the window back to PROT_NONE.
    pub fn unmap(&self, moffset: u64, len: u64) -> Result<(), i32> {
        let at = self.range(moffset, len)?;
        // SAFETY: as in `map`: the range is inside the reservation, which
        // gets the same kind of anonymous PROT_NONE pages it started with.
        unsafe { reserve(at, len as usize, libc::MAP_FIXED) }
            .map(drop)
            .map_err(errno)
    }

    /// Unmaps the whole window (the guest unmounted, or reset the device).
    pub fn clear(&self) {
        let _ = self.unmap(0, self.len);
    }
}

/// Anonymous PROT_NONE address space of `size` bytes that costs no memory
/// (MAP_NORESERVE): at `at` with `MAP_FIXED` in `flags`, else where the
/// kernel chooses.
///
/// # Safety
/// With MAP_FIXED, `at..at + size` must be address space the caller owns
/// and no Rust reference points into.
unsafe fn reserve(
    at: *mut libc::c_void,
    size: usize,
    flags: libc::c_int,
) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: the caller's contract above; an anonymous mapping reads no file.
    let p = unsafe { libc::mmap(at, size, libc::PROT_NONE, ANON_NORESERVE | flags, -1, 0) };
    if p == libc::MAP_FAILED {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(p)
    }
}

/// The errno a FUSE reply carries for a failed mmap.
fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // The reservation is kept (PROT_NONE again), never unmapped: a KVM
        // slot may still point at it, and no other mapping may land there
        // while one does. It is address space only, and the process ends
        // with its VM.
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window starts on a 2 MiB boundary of host address space, as it
    /// does in the guest's, whatever address the kernel chose: without it
    /// KVM cannot map a host huge page into the window whole.
    #[test]
    fn the_window_starts_on_a_2_mib_host_boundary() {
        let windows: Vec<DaxWindow> = (0..8)
            .map(|i| DaxWindow::new(i * CHUNK, CHUNK).unwrap())
            .collect();
        for w in &windows {
            assert_eq!(w.host_addr() % CHUNK, 0, "{:#x}", w.host_addr());
        }
    }
}
