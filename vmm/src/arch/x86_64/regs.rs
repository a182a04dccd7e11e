//! Registers of a vCPU at the kernel's 64-bit entry point: long mode with the
//! identity map, flat segments from our GDT, rsi -> boot_params; plus FPU,
//! the boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

use super::boot::{GDT_LIMIT, gdt};
use super::{BOOT_STACK, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted {set} of the {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A segment register loaded from GDT entry `index`.
fn segment(index: u16) -> kvm_segment {
    let e = gdt()[index as usize];
    kvm_segment {
        base: ((e >> 16) & 0xff_ffff) | (((e >> 56) & 0xff) << 24),
        limit: {
            #[allow(clippy::cast_possible_truncation, reason = "masked to 20 bits")]
            let l = ((e & 0xffff) | (((e >> 48) & 0xf) << 16)) as u32;
            if (e >> 55) & 1 == 1 {
                (l << 12) | 0xfff // page granularity
            } else {
                l
            }
        },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g: ((e >> 55) & 1) as u8,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for 64-bit entry, starting from KVM's defaults.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let code = segment(1);
    let data = segment(2);
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(3);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = GDT_LIMIT;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 7;
    s.cr3 = PML4_ADDR;
    s.cr4 |= CR4_PAE;
    s.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    s.efer |= EFER_LME | EFER_LMA;
    s
}

/// Sets every register of the boot vCPU (or, with `boot == false`, only what
/// an application processor needs before the BSP wakes it with INIT/SIPI).
pub fn setup(vcpu: &VcpuFd, entry: u64, boot: bool) -> Result<(), RegsError> {
    let msrs = boot_msrs();
    let set = vcpu.set_msrs(&msrs).map_err(kvm("setting MSRs"))?;
    if set != msrs.as_slice().len() {
        return Err(RegsError::Msrs {
            set,
            wanted: msrs.as_slice().len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("setting the FPU"))?;
    setup_lapic(vcpu)?;
    if !boot {
        return Ok(());
    }
    let sregs = vcpu.get_sregs().map_err(kvm("reading special registers"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs))
        .map_err(kvm("setting special registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("setting registers"))
}

fn boot_msrs() -> Msrs {
    let e = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        e(0x174, 0),             // IA32_SYSENTER_CS
        e(0x175, 0),             // IA32_SYSENTER_ESP
        e(0x176, 0),             // IA32_SYSENTER_EIP
        e(0xc000_0081, 0),       // STAR
        e(0xc000_0082, 0),       // LSTAR
        e(0xc000_0083, 0),       // CSTAR
        e(0xc000_0084, 0),       // SYSCALL_MASK
        e(0xc000_0102, 0),       // KERNEL_GS_BASE
        e(0x10, 0),              // TSC
        e(0x1a0, 1),             // MISC_ENABLE: fast strings
        e(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    Msrs::from_entries(&entries).expect("a fixed, small MSR list fits")
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets a delivery mode into a LVT register value.
pub fn lvt_with_mode(value: u32, mode: u32) -> u32 {
    (value & !0x700) | (mode << 8)
}

fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("reading the LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let v = lvt_with_mode(u32::from_le_bytes(bytes), mode).to_le_bytes();
        for (i, b) in v.iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("setting the LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_special_registers() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cs.l, 1, "64-bit code segment");
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.ds.selector, 16);
        assert_eq!(s.cs.limit, 0xffff_ffff);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn lvt_modes() {
        assert_eq!(lvt_with_mode(0x0001_0000, APIC_MODE_EXTINT), 0x0001_0700);
        assert_eq!(lvt_with_mode(0x0000_0700, APIC_MODE_NMI), 0x0000_0400);
    }

    #[test]
    fn boot_msrs_cover_syscall_and_mtrr() {
        let m = boot_msrs();
        assert!(
            m.as_slice()
                .iter()
                .any(|e| e.index == 0x2ff && e.data == 0x806)
        );
    }
}
