//! x86_64: memory layout, boot parameters, e820, mptable, CPUID, registers.
//!
//! Guest physical layout (all below 1 MiB is fixed; RAM above it):
//! ```text
//! 0x0000_0500  GDT            0x0000_0520  IDT (empty)
//! 0x0000_7000  boot_params    0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4           0x0000_a000  PDPT    0x0000_b000  PD
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX)
//! 0x0009_fc00  EBDA: the MP table
//! 0x0010_0000  kernel (ELF, loaded where its headers say), then RAM
//! 0xc000_0000  MMIO gap (virtio-mmio devices at MMIO_START, IOAPIC, LAPIC)
//! 0x1_0000_0000  RAM above 4 GiB when the guest has more than 3 GiB
//! ```

pub mod boot;
pub mod cpuid;
pub mod mptable;
pub mod regs;

/// Start of the GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Start of the (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page tables for the identity map the kernel starts with.
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line accepted (the kernel's COMMAND_LINE_SIZE on x86_64).
pub const CMDLINE_MAX: usize = 2048;
/// Extended BIOS data area: where the MP table goes, and where RAM below
/// 1 MiB ends in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: the kernel and the rest of RAM.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (RAM beyond it continues at 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First address for virtio-mmio devices.
pub const MMIO_START: u64 = 0xd000_0000;
/// The IOAPIC's MMIO window.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO window.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS and identity map pages, inside the MMIO gap, away from devices.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// Most vCPUs a guest may have (the MP table's APIC ids stay below the IOAPIC's).
pub const MAX_VCPUS: u8 = 32;
/// Number of IOAPIC pins (GSIs) a guest has.
pub const IOAPIC_PINS: u32 = 24;

// hull-vmm runs on x86_64 only, where usize is 64 bits wide.
const _: () = assert!(usize::BITS == u64::BITS);

/// A guest address or length as a host `usize`: lossless on x86_64 (see
/// the assertion above), so callers need no fallible conversion.
#[allow(
    clippy::cast_possible_truncation,
    reason = "usize is 64 bits on x86_64, asserted at compile time"
)]
pub const fn u64_to_usize(v: u64) -> usize {
    v as usize
}

/// Guest RAM ranges for `mem_bytes` of memory: below the MMIO gap, and the
/// rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

/// Where the virtio-fs DAX windows start: above RAM and the MMIO gap, at
/// the next GiB (the guest hot-adds the window as device memory).
pub fn dax_windows_start(mem_bytes: u64) -> u64 {
    let top = ram_ranges(mem_bytes)
        .last()
        .map_or(0, |&(start, len)| start + len)
        .max(MMIO_GAP_END);
    top.div_ceil(1 << 30) * (1 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dax_windows_start_above_ram_and_the_gap() {
        assert_eq!(dax_windows_start(128 << 20), 4 << 30);
        assert_eq!(dax_windows_start(4 << 30), 5 << 30);
        assert_eq!(dax_windows_start((4 << 30) + 1), 6 << 30);
    }

    #[test]
    fn ram_below_and_above_the_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }
}
