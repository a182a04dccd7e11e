//! CPUID for each vCPU: KVM's supported set, with topology that matches the
//! MP table (one socket, one thread per core, APIC id = vCPU index), the
//! hypervisor bit set, power/PMU leaves a guest must not believe cleared, and
//! the two timer bits that spare the guest a calibration at boot.
//!
//! Timer bits: KVM emulates the TSC-deadline mode of the local APIC timer
//! (`KVM_CAP_TSC_DEADLINE_TIMER`) but leaves CPUID.1:ECX[24] clear in its
//! supported set; without it Linux calibrates the APIC timer against the
//! PIT at boot (`calibrate_APIC_clock`, about 100 ms of guest time with
//! dozens of timer interrupts). CPUID.6:EAX[2] (ARAT, the APIC timer keeps
//! running in idle) is the one bit of leaf 6 KVM reports; without it Linux
//! marks the APIC timer as stopping in deep idle and keeps the PIT as a
//! broadcast timer.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX[24]: the local APIC timer has a TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.6:EAX[2]: the APIC timer always runs (ARAT).
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// Rewrites `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu` of `vcpus`;
/// `tsc_deadline` says KVM emulates the TSC-deadline timer.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], cpu: u8, vcpus: u8, tsc_deadline: bool) {
    let apic_id = u32::from(cpu);
    let n = u32::from(vcpus.max(1));
    // Bits of the APIC id that number the cores of the package.
    let core_bits = 32 - (n - 1).leading_zeros();
    for e in entries.iter_mut() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0xff) | (8 << 8) | (n << 16) | (apic_id << 24);
                e.ecx |= 1 << 31; // running under a hypervisor
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= 1 << 28; // HTT: the logical count above is valid
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0x4 => {
                // Deterministic cache parameters: cores per package, and which
                // caches are shared (L3 by all, others private).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
            }
            0x6 => {
                // No thermal/power management; only ARAT, if KVM has it.
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xa => {
                // No architectural PMU.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => {
                let (shift, count, level_type) = match e.index {
                    0 => (0, 1, 1),         // SMT: one thread per core
                    1 => (core_bits, n, 2), // cores
                    _ => (0, 0, 0),         // no further levels
                };
                e.eax = shift;
                e.ebx = count;
                e.ecx = (level_type << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xff & !(0xf << 12)) | (n - 1) | (core_bits << 12);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // compute unit id, one thread per unit
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn find(es: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *es.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn apic_ids_and_counts_per_vcpu() {
        for cpu in 0..4u8 {
            let mut es = vec![entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
            normalize(&mut es, cpu, 4, true);
            let l1 = find(&es, 1, 0);
            assert_eq!(l1.ebx >> 24, u32::from(cpu));
            assert_eq!((l1.ebx >> 16) & 0xff, 4);
            assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
            assert_eq!(find(&es, 0xb, 0).edx, u32::from(cpu));
            let cores = find(&es, 0xb, 1);
            assert_eq!((cores.eax, cores.ebx, cores.ecx >> 8), (2, 4, 2));
            assert_eq!(find(&es, 0xb, 2).ebx, 0);
        }
    }

    #[test]
    fn single_vcpu_has_no_htt_and_power_leaves_are_cleared() {
        let mut es = vec![
            entry(1, 0),
            entry(6, 0),
            entry(0xa, 0),
            entry(0x8000_0008, 0),
        ];
        normalize(&mut es, 0, 1, false);
        assert_eq!(find(&es, 1, 0).edx & (1 << 28), 0);
        assert_eq!(find(&es, 6, 0).eax, LEAF6_EAX_ARAT, "only ARAT is kept");
        assert_eq!(find(&es, 6, 0).ecx, 0);

        assert_eq!(find(&es, 0xa, 0).eax, 0);
        assert_eq!(find(&es, 0x8000_0008, 0).ecx & 0xff, 0);
    }

    #[test]
    fn tsc_deadline_bit_follows_kvm_capability() {
        for (cap, want) in [(true, LEAF1_ECX_TSC_DEADLINE), (false, 0)] {
            let mut es = vec![entry(1, 0)];
            es[0].ecx = 0;
            normalize(&mut es, 0, 1, cap);
            assert_eq!(es[0].ecx & LEAF1_ECX_TSC_DEADLINE, want);
        }
    }

    #[test]
    fn cache_sharing_follows_the_level() {
        let mut es = vec![entry(4, 0), entry(4, 3)];
        es[0].eax = 1 << 5; // L1
        es[1].eax = 3 << 5; // L3
        normalize(&mut es, 0, 8, true);
        assert_eq!((es[0].eax >> 14) & 0xfff, 0);
        assert_eq!((es[1].eax >> 14) & 0xfff, 7);
        assert_eq!(es[1].eax >> 26, 7);
    }
}
