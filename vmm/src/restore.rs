//! [`Vmm::restore`]: a VM from a snapshot instead of a kernel, ready to
//! run from the instruction after the guest's snapshot mark.

use std::sync::mpsc;
use std::time::Instant;

use vm_memory::GuestAddress;

use crate::VmExit;
use crate::builder::{Core, attach_virtio, legacy_devices};
use crate::config::VmConfig;
use crate::devices::bus::Bus;
use crate::kvm::memory::file_backed;
use crate::kvm::vm::Vm;
use crate::snapshot::Snapshot;
use crate::vmm::{Vcpu, Vmm, VmmError};

impl Vmm {
    /// Restores the VM saved in `snap` (opened and checked by
    /// [`Snapshot::open`]). `cfg` gives what belongs to this clone and not
    /// to the snapshot: the serial output and the devices' host side (the
    /// same devices, in the same order, as when the snapshot was taken);
    /// its kernel, initrd, vCPUs and memory size are the snapshot's.
    ///
    /// State goes back in the order KVM needs: memory, then the VM's
    /// irqchip, PIT and clock, then each vCPU (CPUID first), then the
    /// devices, whose queues are each processed once so nothing the guest
    /// queued before the snapshot waits for a notification that came
    /// before it.
    pub fn restore(cfg: VmConfig, snap: Snapshot, start: Instant) -> Result<Vmm, VmmError> {
        let state = snap.state;
        let ranges: Vec<(GuestAddress, usize, u64)> = state
            .memory
            .iter()
            .map(|r| {
                let len = usize::try_from(r.len)
                    .map_err(|_| crate::kvm::memory::MemoryError::TooLarge(r.gpa))?;
                Ok((GuestAddress(r.gpa), len, r.offset))
            })
            .collect::<Result<_, crate::kvm::memory::MemoryError>>()
            .map_err(|source| VmmError::Memory {
                mib: state.origin.mem_mib,
                source,
            })?;
        let mem = file_backed(
            &ranges,
            &snap.memory,
            &state.data,
            crate::kvm::memory::huge_pages_here(cfg.huge_pages),
        )
        .map_err(|source| VmmError::Memory {
            mib: state.origin.mem_mib,
            source,
        })?;
        drop(snap.memory);
        log::debug!("guest memory mapped from the snapshot");

        let vm = Vm::new()?;
        log::debug!("VM created");
        vm.set_memory(&mem)?;
        state.vm.restore(vm.fd())?;
        log::debug!("guest memory given to KVM, VM state restored");

        let mut vcpus = Vec::with_capacity(state.vcpus.len());
        for saved in &state.vcpus {
            let fd = vm.create_vcpu(saved.id)?;
            saved.restore(&fd)?;
            vcpus.push(Vcpu { id: saved.id, fd });
        }
        log::debug!("{} vCPUs created and restored", vcpus.len());

        let mut mmio = Bus::new();
        let (exit_tx, exit_rx) = mpsc::channel::<VmExit>();
        let devices = attach_virtio(&cfg, &vm, &mem, &mut mmio, &exit_tx, Some(&state.devices))?;
        log::debug!("virtio devices restored");
        let legacy = legacy_devices(&cfg, &vm, &exit_tx, start, None)?;
        legacy
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&state.serial);
        log::debug!("VM restored in {:?}", start.elapsed());
        let core = Core {
            vm,
            mem,
            vcpus,
            mmio,
            devices,
            exit: (exit_tx, exit_rx),
        };
        Ok(Vmm::assemble(core, legacy, None))
    }
}
