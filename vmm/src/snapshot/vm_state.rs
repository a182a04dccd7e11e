//! The VM-wide state KVM keeps: the in-kernel PICs and IOAPIC, the PIT and
//! the KVM clock.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("{what} of the VM")]
pub struct VmStateError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(err("reading the irqchip"))?;
    Ok(chip)
}

impl VmState {
    pub fn save(fd: &VmFd) -> Result<VmState, VmStateError> {
        let mut clock = fd.get_clock().map_err(err("reading the KVM clock"))?;
        // KVM_SET_CLOCK refuses the flags KVM_GET_CLOCK reports about the
        // host (TSC_STABLE, REALTIME, HOST_TSC): only the value travels.
        clock.flags = 0;
        Ok(VmState {
            pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
            pit: fd.get_pit2().map_err(err("reading the PIT"))?,
            clock,
        })
    }

    /// Sets the state on a fresh VM that already has its irqchip and PIT.
    pub fn restore(&self, fd: &VmFd) -> Result<(), VmStateError> {
        fd.set_pit2(&self.pit).map_err(err("setting the PIT"))?;
        fd.set_clock(&self.clock)
            .map_err(err("setting the KVM clock"))?;
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            fd.set_irqchip(chip).map_err(err("setting the irqchip"))?;
        }
        Ok(())
    }
}
