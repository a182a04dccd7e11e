//! Opening KVM and creating the VM: checks, TSS, in-kernel irqchip and PIT,
//! guest memory slots, vCPUs.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{KvmKind, detect_kvm_kind};
use crate::arch::x86_64::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, u64_to_usize};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm ({kind})")]
    Open {
        kind: KvmKind,
        source: kvm_ioctls::Error,
    },
    #[error("KVM API version {0}, hull-vmm needs 12")]
    ApiVersion(i32),
    #[error("KVM lacks a capability hull-vmm needs: {0}")]
    MissingCap(&'static str),
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// A KVM VM with its irqchip and PIT.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    pub fn new() -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(|source| VmError::Open {
            kind: detect_kvm_kind(),
            source,
        })?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::SetTssAddr, "SET_TSS_ADDR"),
            (Cap::Pit2, "PIT2"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::Ioeventfd, "IOEVENTFD"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(kvm_err("creating the VM"))?;
        fd.set_tss_address(u64_to_usize(KVM_TSS_ADDR))
            .map_err(kvm_err("setting the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_err("setting the identity map address"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("creating the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(kvm_err("creating the PIT"))?;
        Ok(Vm { kvm, fd })
    }

    /// The VM file descriptor (for irqfds and ioeventfds).
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Gives every region of `mem` to the guest, one slot each.
    pub fn set_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::MissingCap("host address of guest memory"))?;
            // SAFETY: the region is a live mmap owned by `mem`, which the caller
            // keeps alive for as long as the VM runs (it outlives every vCPU:
            // the process exits when the VM does); its host address and length
            // describe exactly that mapping.
            unsafe {
                self.set_slot(
                    slot,
                    region.start_addr().0,
                    host as u64,
                    region.len(),
                    "registering guest memory",
                )
            }?;
        }
        Ok(())
    }

    /// Memory slot `slot`: `len` bytes of guest-physical space at `gpa`,
    /// backed by the host range at `host`.
    ///
    /// # Safety
    /// `host..host + len` must stay mapped in this process while the VM
    /// runs (KVM reaches it through the host's page tables).
    unsafe fn set_slot(
        &self,
        slot: u32,
        gpa: u64,
        host: u64,
        len: u64,
        what: &'static str,
    ) -> Result<(), VmError> {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: the caller's contract above.
        unsafe { self.fd.set_user_memory_region(r) }.map_err(kvm_err(what))
    }

    /// Gives the guest `len` bytes at `gpa` backed by the host range at
    /// `host` in memory slot `slot` (a virtio-fs DAX window: a reservation
    /// that is PROT_NONE where no file is mapped).
    pub fn add_window(&self, slot: u32, gpa: u64, host: u64, len: u64) -> Result<(), VmError> {
        // SAFETY: `host..host + len` is a reservation the caller keeps for
        // the life of the process (fs::dax::DaxWindow never unmaps it); KVM
        // reaches its pages through the host's page tables, so a PROT_NONE
        // or truncated part cannot be resolved by KVM rather than touching
        // anything else.
        unsafe { self.set_slot(slot, gpa, host, len, "registering a virtio-fs DAX window") }
    }

    /// KVM's supported CPUID set (to be normalised per vCPU).
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("reading the supported CPUID"))
    }

    /// Whether KVM emulates the local APIC timer's TSC-deadline mode (the
    /// guest learns it from CPUID, which KVM's supported set leaves clear).
    pub fn has_tsc_deadline_timer(&self) -> bool {
        self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// The MSRs KVM saves and restores for a vCPU.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, VmError> {
        self.kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .map_err(kvm_err("reading the MSR index list"))
    }

    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, VmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(kvm_err("creating a vCPU"))
    }
}
