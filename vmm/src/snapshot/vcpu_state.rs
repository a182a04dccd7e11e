//! One vCPU's architectural state, as KVM gives it and takes it back.
//!
//! The FPU is saved through XSAVE (which holds the x87/SSE state too);
//! KVM_GET_FPU would be a second, older copy of the same registers.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    #[error("{what} of vCPU {id}")]
    Kvm {
        what: &'static str,
        id: u8,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM took {set} of its {saved} saved MSRs (MSR {msr:#x} refused)")]
    Msrs {
        id: u8,
        set: usize,
        saved: usize,
        msr: u32,
    },
    #[error("vCPU {id}: the saved {what} does not fit KVM's structure")]
    TooMany { id: u8, what: &'static str },
}

/// Everything KVM keeps for one vCPU that a restored guest needs.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    /// In the order they are to be set back: TSC_DEADLINE after TSC.
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// The MSRs of `msr_list` that this vCPU lets us read: a MSR KVM lists
/// but cannot read (host-dependent) would stop KVM_GET_MSRS at it.
pub fn readable_msrs(fd: &VcpuFd, msr_list: &[u32]) -> Vec<u32> {
    msr_list
        .iter()
        .copied()
        .filter(|&index| {
            let Ok(mut one) = Msrs::from_entries(&[kvm_msr_entry {
                index,
                ..Default::default()
            }]) else {
                return false;
            };
            matches!(fd.get_msrs(&mut one), Ok(1))
        })
        .collect()
}

/// Puts TSC_DEADLINE after TSC: KVM reads a deadline against the guest's
/// TSC as it stands, so setting it before the TSC would arm the timer
/// against the wrong clock (Firecracker learned this the hard way).
pub fn order_msrs(msrs: &mut [kvm_msr_entry]) {
    msrs.sort_by_key(|m| m.index == MSR_IA32_TSC_DEADLINE);
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running (paused with
    /// immediate_exit, its pending I/O completed). `msrs` are the indices
    /// [`readable_msrs`] kept.
    pub fn save(fd: &VcpuFd, id: u8, msrs: &[u32]) -> Result<VcpuState, VcpuStateError> {
        let err = |what| move |source| VcpuStateError::Kvm { what, id, source };
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("reading the CPUID"))?;
        let mut list = Msrs::from_entries(
            &msrs
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| VcpuStateError::TooMany { id, what: "MSRs" })?;
        let read = fd.get_msrs(&mut list).map_err(err("reading the MSRs"))?;
        let mut msr_entries = list.as_slice()[..read.min(list.as_slice().len())].to_vec();
        order_msrs(&mut msr_entries);
        Ok(VcpuState {
            id,
            cpuid: cpuid.as_slice().to_vec(),
            mp_state: fd.get_mp_state().map_err(err("reading the MP state"))?,
            regs: fd.get_regs().map_err(err("reading the registers"))?,
            sregs: fd
                .get_sregs()
                .map_err(err("reading the special registers"))?,
            xsave: fd.get_xsave().map_err(err("reading the XSAVE area"))?,
            xcrs: fd.get_xcrs().map_err(err("reading the XCRs"))?,
            debug_regs: fd
                .get_debug_regs()
                .map_err(err("reading the debug registers"))?,
            lapic: fd.get_lapic().map_err(err("reading the local APIC"))?,
            msrs: msr_entries,
            events: fd
                .get_vcpu_events()
                .map_err(err("reading the vCPU events"))?,
        })
    }

    /// Gives the state back to a freshly created vCPU, in the order KVM
    /// needs: CPUID first (it decides which registers and MSRs exist),
    /// then the registers, the LAPIC before the MSRs (TSC_DEADLINE arms the
    /// LAPIC timer), and the pending events last.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), VcpuStateError> {
        let id = self.id;
        let err = |what| move |source| VcpuStateError::Kvm { what, id, source };
        let cpuid = CpuId::from_entries(&self.cpuid)
            .map_err(|_| VcpuStateError::TooMany { id, what: "CPUID" })?;
        fd.set_cpuid2(&cpuid).map_err(err("setting the CPUID"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(err("setting the MP state"))?;
        fd.set_regs(&self.regs)
            .map_err(err("setting the registers"))?;
        fd.set_sregs(&self.sregs)
            .map_err(err("setting the special registers"))?;
        // SAFETY: `xsave` is a whole kvm_xsave read by KVM_GET_XSAVE (the
        // legacy 4 KiB form, which KVM_SET_XSAVE reads in full); its
        // contents are checked by KVM, which refuses invalid states.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(err("setting the XSAVE area"))?;
        fd.set_xcrs(&self.xcrs).map_err(err("setting the XCRs"))?;
        fd.set_debug_regs(&self.debug_regs)
            .map_err(err("setting the debug registers"))?;
        fd.set_lapic(&self.lapic)
            .map_err(err("setting the local APIC"))?;
        let mut msrs = self.msrs.clone();
        order_msrs(&mut msrs);
        let list =
            Msrs::from_entries(&msrs).map_err(|_| VcpuStateError::TooMany { id, what: "MSRs" })?;
        let set = fd.set_msrs(&list).map_err(err("setting the MSRs"))?;
        if set != msrs.len() {
            return Err(VcpuStateError::Msrs {
                id,
                set,
                saved: msrs.len(),
                msr: msrs[set].index,
            });
        }
        fd.set_vcpu_events(&self.events)
            .map_err(err("setting the vCPU events"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSR_IA32_TSC: u32 = 0x10;

    #[test]
    fn tsc_deadline_goes_after_tsc_and_the_rest_keep_their_order() {
        let e = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut msrs = vec![
            e(0x1b),
            e(MSR_IA32_TSC_DEADLINE),
            e(0xc0000080),
            e(MSR_IA32_TSC),
        ];
        order_msrs(&mut msrs);
        let order: Vec<u32> = msrs.iter().map(|m| m.index).collect();
        assert_eq!(
            order,
            [0x1b, 0xc0000080, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]
        );
    }
}
