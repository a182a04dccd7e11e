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
use crate::devices::virtio::mmio::{MmioTransport, MmioTransportState, NOTIFY_OFFSET};
use crate::devices::virtio::persist::PersistError;
use crate::devices::virtio::{Interrupt, VirtioDevice};

/// Size of each device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// First IRQ given to a virtio device (below: the legacy ISA devices).
pub const FIRST_IRQ: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error("too many devices: only {0} IRQs are available for virtio devices")]
    OutOfIrqs(u32),
    #[error("{what}: {error}")]
    Setup {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("placing the device on the MMIO bus: {0}")]
    Bus(crate::devices::bus::BusError),
    #[error("restoring a virtio device: {0}")]
    Restore(PersistError),
}

fn setup_err(what: &'static str) -> impl FnOnce(std::io::Error) -> DeviceManagerError {
    move |error| DeviceManagerError::Setup { what, error }
}

/// The wiring of one device: its MMIO window, IRQ, interrupt eventfd and
/// queue notification eventfds.
struct Slot {
    addr: u64,
    irq: u32,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
}

pub struct DeviceManager {
    mem: GuestMemoryMmap,
    event_loop: EventLoop,
    next_addr: u64,
    next_irq: u32,
    cmdline: Vec<String>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl DeviceManager {
    pub fn new(mem: GuestMemoryMmap, event_loop: EventLoop) -> Self {
        DeviceManager {
            mem,
            event_loop,
            next_addr: MMIO_START,
            next_irq: FIRST_IRQ,
            cmdline: Vec::new(),
            transports: Vec::new(),
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
        let slot = self.wire(vm, &device)?;
        let transport = MmioTransport::new(
            device,
            self.mem.clone(),
            self.event_loop.clone(),
            slot.interrupt.clone(),
            slot.queue_evts,
        );
        self.place(mmio, transport, slot.addr, slot.irq)
    }

    /// Adds a freshly created `device` that carries on from `state` (what
    /// [`DeviceManager::save`] gave for it). Devices are restored in the
    /// order they were added, so each gets the window and IRQ the guest
    /// knows it by.
    pub fn restore(
        &mut self,
        vm: &VmFd,
        mmio: &mut Bus,
        device: Arc<Mutex<dyn VirtioDevice>>,
        state: &MmioTransportState,
    ) -> Result<(), DeviceManagerError> {
        let slot = self.wire(vm, &device)?;
        // Process every queue once after restore: under EVENT_IDX the
        // guest notifies only past the avail_event it last saw, so buffers
        // it queued before the snapshot would otherwise wait forever.
        let kicks = slot
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup_err("queue eventfd"))?;
        let transport = MmioTransport::restore(
            device,
            self.mem.clone(),
            self.event_loop.clone(),
            slot.interrupt.clone(),
            slot.queue_evts,
            state,
        )
        .map_err(DeviceManagerError::Restore)?;
        self.place(mmio, transport, slot.addr, slot.irq)?;
        for k in kicks {
            k.write(1).map_err(setup_err("queue eventfd"))?;
        }
        Ok(())
    }

    /// Pauses every device and saves it with its transport, in the order
    /// they were added. The vCPUs must be stopped first: a register write
    /// after the save would be lost.
    pub fn save(&self) -> Vec<MmioTransportState> {
        self.transports
            .iter()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).save())
            .collect()
    }

    /// The next window and IRQ, with the irqfd and one ioeventfd per queue
    /// of `device` registered with KVM.
    fn wire(
        &mut self,
        vm: &VmFd,
        device: &Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Slot, DeviceManagerError> {
        if self.next_irq == COM1_IRQ {
            self.next_irq += 1;
        }
        if self.next_irq >= IOAPIC_PINS {
            return Err(DeviceManagerError::OutOfIrqs(IOAPIC_PINS - FIRST_IRQ));
        }
        let (addr, irq) = (self.next_addr, self.next_irq);
        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("interrupt eventfd"))?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(|e| setup_err("registering the irqfd")(e.into()))?;
        let queues = device
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queue_max_sizes()
            .len();
        let mut queue_evts = Vec::with_capacity(queues);
        for i in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(setup_err("queue eventfd"))?;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(addr + NOTIFY_OFFSET), i as u32)
                .map_err(|e| setup_err("registering the ioeventfd")(e.into()))?;
            queue_evts.push(evt);
        }
        Ok(Slot {
            addr,
            irq,
            interrupt: Interrupt::new(irq_evt),
            queue_evts,
        })
    }

    /// Puts `transport` on the bus at its window and names it on the
    /// kernel command line.
    fn place(
        &mut self,
        mmio: &mut Bus,
        transport: MmioTransport,
        addr: u64,
        irq: u32,
    ) -> Result<(), DeviceManagerError> {
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), addr, MMIO_WINDOW)
            .map_err(DeviceManagerError::Bus)?;
        self.transports.push(transport);
        self.cmdline
            .push(format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
        self.next_addr += MMIO_WINDOW;
        self.next_irq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;

    /// Each error says its cause once, in its message or as its source.
    #[test]
    fn device_errors_do_not_repeat_their_cause() {
        let missing = std::path::Path::new("/nonexistent/hull/disk.img");
        let e = crate::devices::virtio::block::Block::open(missing, true, None)
            .err()
            .expect("opened a missing disk");
        assert_eq!(
            chain(&e),
            "disk /nonexistent/hull/disk.img: No such file or directory (os error 2)"
        );
        let e = crate::devices::virtio::vsock::Vsock::new(3, missing)
            .err()
            .expect("listened in a missing directory");
        assert_eq!(
            chain(&e),
            "vsock socket /nonexistent/hull/disk.img: No such file or directory (os error 2)"
        );
        let el = crate::devices::virtio::event_loop::test_loop();
        let e = crate::devices::virtio::fs::Fs::new("vol0", missing, false, &el)
            .err()
            .expect("shared a missing directory");
        assert_eq!(
            chain(&e),
            "shared directory /nonexistent/hull/disk.img: No such file or directory (os error 2)"
        );
        let e = crate::devices::virtio::fs::Fs::new("a b", missing, false, &el)
            .err()
            .expect("took a tag with a space");
        assert_eq!(
            chain(&e),
            "virtio-fs tag \"a b\": 1 to 36 bytes, no ',', '=' or space"
        );
        let e = setup_err("queue eventfd")(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(
            chain(&e),
            "queue eventfd: Too many open files (os error 24)"
        );
        let e = DeviceManagerError::Bus(crate::devices::bus::BusError::Overlap {
            base: 0x1000,
            len: 0x1000,
        });
        assert_eq!(
            chain(&e),
            "placing the device on the MMIO bus: bus range 0x1000+0x1000 overlaps an existing device"
        );
    }
}
