//! The Linux 64-bit boot protocol: the zero page (boot_params) with its e820
//! map, the command line and the initrd, and the identity-mapped page tables
//! and GDT the kernel's 64-bit entry expects.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the e820 map has more than {0} entries")]
    TooManyE820Entries(usize),
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory below {limit:#x}; give the VM more memory"
    )]
    InitrdDoesNotFit { size: u64, limit: u64 },
    #[error("{what} ({value:#x}) does not fit the 32-bit field of the boot header")]
    HeaderField { what: &'static str, value: u64 },
    #[error("writing {what} to guest memory")]
    Write {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

/// A boot_params page, as a plain byte-valued wrapper.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct BootParams(pub boot_params);

// SAFETY: boot_params is a plain C struct of integers and arrays of integers:
// any byte pattern is a valid value and it has no padding-dependent invariants.
unsafe impl ByteValued for BootParams {}

/// The e820 map for the guest's RAM ranges: low RAM up to the EBDA, then
/// every range from 1 MiB up.
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let entry = |addr, size, kind| boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for &(start, len) in ram {
        let start_hi = start.max(HIMEM_START);
        let end = start + len;
        if end > start_hi {
            map.push(entry(start_hi, end - start_hi, E820_RAM));
        }
    }
    map
}

/// Fills the zero page: setup header fields a boot loader owns, the command
/// line and initrd locations, and the e820 map.
pub fn boot_params_for(
    ram: &[(u64, u64)],
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<BootParams, BootError> {
    let mut p = boot_params::default();
    p.hdr.type_of_loader = 0xff; // "undefined" boot loader
    p.hdr.boot_flag = 0xaa55;
    p.hdr.header = 0x5372_6448; // "HdrS"
    p.hdr.cmd_line_ptr = header_u32("the command line address", CMDLINE_ADDR)?;
    p.hdr.cmdline_size = header_u32("the command line length", cmdline_len as u64)?;
    p.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = header_u32("the initrd address", addr)?;
        p.hdr.ramdisk_size = header_u32("the initrd size", size)?;
    }
    let map = e820_map(ram);
    let too_many = || BootError::TooManyE820Entries(p.e820_table.len());
    if map.len() > p.e820_table.len() {
        return Err(too_many());
    }
    p.e820_entries = u8::try_from(map.len()).map_err(|_| too_many())?;
    p.e820_table[..map.len()].copy_from_slice(&map);
    Ok(BootParams(p))
}

fn header_u32(what: &'static str, value: u64) -> Result<u32, BootError> {
    u32::try_from(value).map_err(|_| BootError::HeaderField { what, value })
}

/// Where the initrd goes: as high as possible in low RAM (below the MMIO gap
/// and below what the kernel can address), page aligned, above the kernel.
pub fn initrd_addr(ram: &[(u64, u64)], kernel_end: u64, size: u64) -> Result<u64, BootError> {
    let low_end = ram.first().map(|&(s, l)| s + l).unwrap_or(0);
    // The 64-bit protocol's initrd_addr_max is 0x7fffffff for older headers.
    let limit = low_end.min(0x8000_0000);
    let addr = limit.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(a) if a >= kernel_end.max(HIMEM_START) => Ok(a),
        _ => Err(BootError::InitrdDoesNotFit { size, limit }),
    }
}

/// GDT entries: null, 64-bit code, data, TSS.
/// The GDT's limit: its size in bytes less one.
pub const GDT_LIMIT: u16 = 4 * 8 - 1;

pub fn gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Packs a segment descriptor from flags, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// Writes everything the 64-bit entry needs into guest memory: GDT, empty
/// IDT, identity-mapped page tables for the first 1 GiB (2 MiB pages), and
/// the zero page.
pub fn write_boot_structures(mem: &GuestMemoryMmap, params: &BootParams) -> Result<(), BootError> {
    let w = |what, addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| BootError::Write { what, source })
    };
    let gdt: Vec<u8> = gdt().iter().flat_map(|e| e.to_le_bytes()).collect();
    w("the GDT", GDT_ADDR, &gdt)?;
    w("the IDT", IDT_ADDR, &0u64.to_le_bytes())?;
    w("the PML4", PML4_ADDR, &(PDPT_ADDR | 0x03).to_le_bytes())?;
    w("the PDPT", PDPT_ADDR, &(PD_ADDR | 0x03).to_le_bytes())?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
        .collect();
    w("the page directory", PD_ADDR, &pd)?;
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(|source| BootError::Write {
            what: "the zero page",
            source,
        })?;
    debug_assert!(GuestAddress(ZERO_PAGE_ADDR).checked_add(4096).is_some());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_skips_the_legacy_hole_and_the_mmio_gap() {
        let map = e820_map(&ram_ranges(4 << 30));
        let ram: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(
            ram,
            vec![
                (0, EBDA_START),
                (HIMEM_START, MMIO_GAP_START - HIMEM_START),
                (MMIO_GAP_END, 1 << 30)
            ]
        );
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_e820() {
        let ram = ram_ranges(256 << 20);
        let p = boot_params_for(&ram, 100, Some((0x0f00_0000, 0x1000)))
            .unwrap()
            .0;
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_ADDR);
        assert_eq!({ p.hdr.cmdline_size }, 100);
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!(p.e820_entries, 3);
        let top = p.e820_table[2];
        assert_eq!(
            ({ top.addr }, { top.size }),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let ram = ram_ranges(256 << 20);
        let a = initrd_addr(&ram, 0x200_0000, 10_000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 10_000 <= 256 << 20);
        assert!(matches!(
            initrd_addr(&ram, 0x200_0000, 300 << 20),
            Err(BootError::InitrdDoesNotFit { .. })
        ));
        // Not over the kernel either.
        assert!(initrd_addr(&ram, (256 << 20) - 4096, 8192).is_err());
    }

    #[test]
    fn gdt_entries_match_the_known_encodings() {
        let g = gdt();
        assert_eq!(usize::from(GDT_LIMIT) + 1, std::mem::size_of_val(&g));
        assert_eq!(g[1], 0x00af_9b00_0000_ffff);
        assert_eq!(g[2], 0x00cf_9300_0000_ffff);
        assert_eq!(g[3], 0x008f_8b00_0000_ffff);
    }
}
