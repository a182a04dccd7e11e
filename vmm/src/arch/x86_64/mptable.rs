//! The Intel MultiProcessor table: how the guest learns its CPUs, the IOAPIC
//! and how ISA interrupts are wired, without ACPI. Built as bytes by a pure
//! function (tested below) and copied into the EBDA.

use super::{EBDA_START, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MAX_VCPUS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("{0} vCPUs: the MP table supports 1 to {MAX_VCPUS}")]
    VcpuCount(u8),
    #[error("the MP table would be {0} bytes, more than its 16-bit length field holds")]
    TooLarge(usize),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// The floating pointer structure followed by the configuration table, to be
/// written at [`EBDA_START`].
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus; // after the CPUs' APIC ids
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend([0, cpu, APIC_VERSION, flags]);
        entries.extend(0x0000_0600u32.to_le_bytes()); // signature: family 6
        entries.extend(0x0000_0201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([1, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in (0u8..).take(IOAPIC_PINS as usize) {
        // ISA IRQ n arrives on IOAPIC pin n, edge-triggered, active high.
        entries.extend([3, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    entries.extend([4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]); // LINT0
    entries.extend([4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]); // LINT1
    count += 2;

    let table_len = 44 + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend(*b"PCMP");
    let len16 = u16::try_from(table_len).map_err(|_| MptableError::TooLarge(table_len))?;
    table.extend(len16.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend(*b"HULL    ");
    table.extend(*b"microVM     ");
    table.extend(0u32.to_le_bytes()); // OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDR.to_le_bytes());
    table.extend(0u16.to_le_bytes()); // extended table
    table.extend([0, 0]);
    table.extend(entries);
    table[7] = checksum(&table);

    #[allow(
        clippy::cast_possible_truncation,
        reason = "EBDA_START is a constant below 1 MiB"
    )]
    let table_addr = EBDA_START as u32 + 16;
    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend(*b"_MP_");
    fp.extend(table_addr.to_le_bytes());
    fp.extend([1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend(table);
    Ok(fp)
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_lengths_hold() {
        for n in [1u8, 2, 32] {
            let t = build(n).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let table = &t[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, n as usize + 2 + IOAPIC_PINS as usize + 2);
            assert!(t.len() <= 1024, "fits in the EBDA");
        }
    }

    #[test]
    fn one_bsp_and_distinct_apic_ids() {
        let t = build(4).unwrap();
        let cpus: Vec<&[u8]> = t[16 + 44..].chunks(20).take(4).collect();
        assert_eq!(cpus.iter().filter(|c| c[3] & CPU_BSP != 0).count(), 1);
        let ids: Vec<u8> = cpus.iter().map(|c| c[1]).collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }

    #[test]
    fn vcpu_limits() {
        assert_eq!(build(0), Err(MptableError::VcpuCount(0)));
        assert_eq!(build(33), Err(MptableError::VcpuCount(33)));
    }
}
