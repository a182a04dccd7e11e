//! Guest RAM: anonymous host memory laid out so that the host can back it
//! with transparent huge pages and KVM can map those as huge pages too.
//!
//! Each region's host address is congruent to its guest address modulo
//! 2 MiB (KVM maps a huge page only where both line up) and is marked
//! MADV_HUGEPAGE (hosts whose THP setting is `madvise`, Debian's default,
//! use huge pages only where asked). Fewer, larger pages mean fewer
//! nested page-table walks for every guest memory access, which is what
//! bulk work in the guest (a disk read copying through its page cache)
//! spends its time on. QEMU does the same for its guest RAM.
//!
//! Except where this host's own CPU is software-emulated (a KVM host under
//! QEMU's TCG, as hull's tests use on machines without hardware KVM): there
//! a guest whose RAM KVM maps with 2 MiB nested pages wedges the whole
//! emulated host once a few such VMs do I/O at once (issue 19: the
//! emulator's vCPU stops in the nested guest at one instruction, spinning
//! in QEMU's cpu_exec, so the emulated host's own kernel never runs again).
//! Guest RAM there is plain 4 KiB-mapped memory; `HULL_VMM_HUGE_PAGES=force`
//! overrides that, for measuring.

use vm_memory::mmap::{MmapRegion, MmapRegionError};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap};

const HUGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("mapping {mib} MiB of host memory")]
    Mmap { mib: usize, source: std::io::Error },
    #[error("guest memory region at {gpa:#x}")]
    Region { gpa: u64, source: MmapRegionError },
    #[error("guest memory region at {0:#x} is too large")]
    TooLarge(u64),
    #[error("laying out the guest memory regions")]
    Layout(#[source] GuestRegionCollectionError),
}

/// Allocates guest memory for `ranges` (guest address, length). With
/// `huge_pages` false, or on a software-emulated CPU (see the module docs),
/// this is plain anonymous memory with no advice.
pub fn guest_memory(
    ranges: &[(GuestAddress, usize)],
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    mapped_memory(ranges, huge_pages_here(huge_pages))
}

/// Whether guest RAM gets huge pages when the configuration asks for them
/// (`wanted`): not on a software-emulated CPU (see the module docs) unless
/// HULL_VMM_HUGE_PAGES=force.
pub fn huge_pages_here(wanted: bool) -> bool {
    let forced = std::env::var("HULL_VMM_HUGE_PAGES").is_ok_and(|v| v == "force");
    wanted && (forced || !cpu_is_software_emulated())
}

/// Guest memory for `ranges`; with `huge_pages`, each region lines up with
/// its guest address modulo 2 MiB and is advised for huge pages.
fn mapped_memory(
    ranges: &[(GuestAddress, usize)],
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for &(gpa, len) in ranges {
        let region = if huge_pages {
            aligned_region(gpa, len)?
        } else {
            MmapRegion::new(len).map_err(|source| MemoryError::Region { gpa: gpa.0, source })?
        };
        regions.push(GuestRegionMmap::new(region, gpa).ok_or(MemoryError::TooLarge(gpa.0))?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

/// Signatures (CPUID leaf 0x4000_0000) of hypervisors that run this host
/// on hardware virtualization.
const HARDWARE_HYPERVISORS: [&[u8; 12]; 6] = [
    b"KVMKVMKVM\0\0\0",
    b"Microsoft Hv",
    b"VMwareVMware",
    b"XenVMMXenVMM",
    b"VBoxVBoxVBox",
    b"ACRNACRNACRN",
];

/// Whether this host runs on a CPU an emulator provides: it says it is a
/// guest (CPUID.1:ECX bit 31) but of no hardware hypervisor (QEMU's TCG
/// gives no signature, or `TCGTCGTCGTCG`).
pub fn cpu_is_software_emulated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        if __cpuid(1).ecx & (1 << 31) == 0 {
            return false; // bare metal
        }
        let leaf = __cpuid(0x4000_0000);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
        sig[8..].copy_from_slice(&leaf.edx.to_le_bytes());
        is_emulator_signature(&sig)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn is_emulator_signature(sig: &[u8; 12]) -> bool {
    !HARDWARE_HYPERVISORS.contains(&sig)
}

/// Guest RAM's protection.
const RAM_PROT: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
/// The flags of the VMM's anonymous guest-physical mappings (guest RAM, DAX
/// windows): private, and reserving no memory until a page is touched.
pub(crate) const ANON_NORESERVE: libc::c_int =
    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// An anonymous mapping (RAM_PROT, ANON_NORESERVE) of `len` bytes whose address
/// is congruent to `gpa` modulo 2 MiB, advised for huge pages.
fn huge_anonymous(gpa: GuestAddress, len: usize) -> Result<*mut u8, MemoryError> {
    let start = huge_aligned_mapping(gpa.0, len, RAM_PROT, ANON_NORESERVE)
        .ok_or(MemoryError::TooLarge(gpa.0))?
        .map_err(|source| MemoryError::Mmap {
            mib: len >> 20,
            source,
        })?;
    // SAFETY: [start, start + len) is the live mapping made above; advice
    // only (where THP is off the memory is simply not huge).
    unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
    Ok(start)
}

/// [`huge_anonymous`] as a region. It lives as long as the process (guest
/// memory is shared with every device thread until the VMM exits).
fn aligned_region(gpa: GuestAddress, len: usize) -> Result<MmapRegion, MemoryError> {
    let start = huge_anonymous(gpa, len)?;
    // SAFETY: [start, start + len) is a live anonymous mapping with exactly
    // these protection and flags, never unmapped while the process runs.
    unsafe { MmapRegion::build_raw(start, len, RAM_PROT, ANON_NORESERVE) }
        .map_err(|source| MemoryError::Region { gpa: gpa.0, source })
}

/// A fresh anonymous mapping (`prot`, `flags`, which must not hold
/// MAP_FIXED) of `len` bytes at an address congruent to `gpa` modulo 2 MiB:
/// KVM maps a host huge page into the guest only where the host and guest
/// addresses agree modulo 2 MiB. 2 MiB more is mapped, then the head and
/// tail around the aligned range are unmapped again. None when `len` is
/// too large to map 2 MiB more.
pub fn huge_aligned_mapping(
    gpa: u64,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
) -> Option<std::io::Result<*mut u8>> {
    let span = len.checked_add(HUGE)?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choice.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), span, prot, flags, -1, 0) };
    if base == libc::MAP_FAILED {
        return Some(Err(std::io::Error::last_os_error()));
    }
    let base = base as usize;
    let want = crate::arch::x86_64::u64_to_usize(gpa) % HUGE;
    let start = base + (want + HUGE - base % HUGE) % HUGE;
    let (head, tail) = (start - base, base + span - (start + len));
    // SAFETY: both ranges lie inside the mapping made above and outside
    // [start, start + len), which is all that is kept.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    Some(Ok(start as *mut u8))
}

/// Guest memory for `ranges` (guest address, length, offset in `file`)
/// mapped private from `file` where `data` (the file's runs of data,
/// offset and length, page-aligned and in order) says it has any: copy on
/// write, so every VM restored from one snapshot shares those pages
/// (through the page cache) until it writes them. The rest of each range
/// is fresh anonymous memory, as the file has only zeros there: a guest's
/// first touch of such a page neither reads the file (which may be on a
/// slow or network file system) nor leaves a page of zeros in the host's
/// page cache. With `huge_pages` (see [`huge_pages_here`]) the anonymous
/// memory lines up with its guest addresses modulo 2 MiB and is advised
/// for huge pages, as a cold-booted VM's RAM is, so a clone's fresh memory
/// comes 2 MiB at a time where no data of the file lies; without, huge
/// pages stay off for the whole range (the file's copy-on-write copies
/// are 4 KiB either way). Note that MADV_DONTNEED brings back the file's
/// bytes where it is mapped, zeros elsewhere (the same bytes either way).
pub fn file_backed(
    ranges: &[(GuestAddress, usize, u64)],
    file: &std::fs::File,
    data: &[(u64, u64)],
    huge_pages: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    use std::os::fd::AsRawFd;
    let (prot, flags) = (RAM_PROT, libc::MAP_PRIVATE | libc::MAP_NORESERVE);
    let mut regions = Vec::new();
    for &(gpa, len, offset) in ranges {
        let mmap_err = || MemoryError::Mmap {
            mib: len >> 20,
            source: std::io::Error::last_os_error(),
        };
        let base = if huge_pages {
            huge_anonymous(gpa, len)?.cast::<libc::c_void>()
        } else {
            // SAFETY: a fresh private anonymous mapping at an address of
            // the kernel's choice.
            let base =
                unsafe { libc::mmap(std::ptr::null_mut(), len, prot, ANON_NORESERVE, -1, 0) };
            if base == libc::MAP_FAILED {
                return Err(mmap_err());
            }
            // SAFETY: advice on the mapping just made; failure only leaves
            // the host's default.
            unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
            base
        };
        let end = offset
            .checked_add(len as u64)
            .ok_or(MemoryError::TooLarge(gpa.0))?;
        for &(start, run) in data {
            let (from, to) = (start.max(offset), start.saturating_add(run).min(end));
            if from >= to {
                continue;
            }
            let off = libc::off_t::try_from(from).map_err(|_| MemoryError::TooLarge(gpa.0))?;
            // `from - offset` < len: inside the mapping above.
            let at = base
                .cast::<u8>()
                .wrapping_add(crate::arch::x86_64::u64_to_usize(from - offset));
            // SAFETY: replaces pages [at, at + to - from) of the anonymous
            // mapping made above (inside it: offset <= from < to <= end)
            // with a private mapping of the file there; the caller checked
            // that the file holds [offset, offset + len) and that `data` is
            // page-aligned.
            let got = unsafe {
                libc::mmap(
                    at.cast(),
                    crate::arch::x86_64::u64_to_usize(to - from),
                    prot,
                    flags | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    off,
                )
            };
            if got == libc::MAP_FAILED {
                let e = mmap_err();
                // SAFETY: the whole mapping made above, not yet handed out.
                unsafe { libc::munmap(base, len) };
                return Err(e);
            }
        }
        // SAFETY: [base, base + len) is the live mapping made above with
        // exactly these protection and flags, never unmapped while the
        // process runs.
        let region = unsafe { MmapRegion::build_raw(base.cast::<u8>(), len, prot, flags) }
            .map_err(|source| MemoryError::Region { gpa: gpa.0, source })?;
        regions.push(GuestRegionMmap::new(region, gpa).ok_or(MemoryError::TooLarge(gpa.0))?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn only_hardware_hypervisors_keep_huge_pages() {
        assert!(!is_emulator_signature(b"KVMKVMKVM\0\0\0"));
        assert!(!is_emulator_signature(b"Microsoft Hv"));
        assert!(is_emulator_signature(b"TCGTCGTCGTCG"));
        assert!(is_emulator_signature(&[0; 12]));
    }

    #[test]
    fn regions_line_up_with_their_guest_addresses_modulo_2m() {
        let ranges = [
            (GuestAddress(0), 4 << 20),
            (GuestAddress(0x1_0000_0000 + 4096), 8 << 20),
        ];
        let mem = mapped_memory(&ranges, true).unwrap();
        for r in mem.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap() as usize;
            assert_eq!((host % HUGE) as u64, r.start_addr().0 % HUGE as u64);
        }
        mem.write_obj(0xabcd_u32, GuestAddress(0x1_0000_0000 + 4096 + 100))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1_0000_0000 + 4096 + 100))
                .unwrap(),
            0xabcd
        );
        assert!(mem.read_obj::<u32>(GuestAddress(8 << 20)).is_err());
    }
}
