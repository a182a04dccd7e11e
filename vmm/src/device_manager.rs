//! Wires virtio devices into a VM: an MMIO window and an IRQ for each, an
//! ioeventfd per queue at the notify register, an irqfd for the interrupt,
//! the transport on the MMIO bus, and the `virtio_mmio.device=` entry the
//! guest kernel finds it by. Devices never register themselves.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{IOAPIC_PINS, MMIO_START};
use crate::devices::bus::Bus;
use crate::devices::legacy::COM1_IRQ;
use crate::devices::virtio::event_loop::EventLoop;
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_OFFSET};
use crate::devices::virtio::{Interrupt, VirtioDevice};

/// Size of each device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// First IRQ given to a virtio device (below: the legacy ISA devices).
pub const FIRST_IRQ: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("too many devices: only {0} IRQs are available for virtio devices")]
    OutOfIrqs(u32),
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("placing the device on the MMIO bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
}

fn setup_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DeviceManagerError {
    move |source| DeviceManagerError::Setup { what, source }
}

pub struct DeviceManager {
    mem: GuestMemoryMmap,
    event_loop: EventLoop,
    next_addr: u64,
    next_irq: u32,
    cmdline: Vec<String>,
}

impl DeviceManager {
    pub fn new(mem: GuestMemoryMmap, event_loop: EventLoop) -> Self {
        DeviceManager {
            mem,
            event_loop,
            next_addr: MMIO_START,
            next_irq: FIRST_IRQ,
            cmdline: Vec::new(),
        }
    }

    /// The kernel command line entries of every device added so far.
    pub fn cmdline_entries(&self) -> &[String] {
        &self.cmdline
    }

    /// Adds `device` to the VM and the MMIO bus.
    pub fn add(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<(), DeviceManagerError> {
        if self.next_irq == COM1_IRQ {
            self.next_irq += 1;
        }
        if self.next_irq >= IOAPIC_PINS {
            return Err(DeviceManagerError::OutOfIrqs(IOAPIC_PINS - FIRST_IRQ));
        }
        let (addr, irq) = (self.next_addr, self.next_irq);
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("interrupt eventfd"))?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(|e| DeviceManagerError::Setup {
                what: "registering the irqfd",
                source: e.into(),
            })?;
        let queues = device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_max_sizes()
            .len();
        let mut queue_evts = Vec::with_capacity(queues);
        for i in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("queue eventfd"))?;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(addr + NOTIFY_OFFSET), i as u32)
                .map_err(|e| DeviceManagerError::Setup {
                    what: "registering the ioeventfd",
                    source: e.into(),
                })?;
            queue_evts.push(evt);
        }
        let transport = MmioTransport::new(
            device,
            self.mem.clone(),
            self.event_loop.clone(),
            Interrupt::new(irq_evt),
            queue_evts,
        );
        mmio.insert(Arc::new(Mutex::new(transport)), addr, MMIO_WINDOW)?;
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
        self.next_addr += MMIO_WINDOW;
        self.next_irq += 1;
        Ok(())
    }
}
