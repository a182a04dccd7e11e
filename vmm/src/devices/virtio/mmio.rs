//! The virtio-mmio transport, version 2 (virtio 1.1, 4.2.2): registers on
//! the MMIO bus, feature negotiation, queue setup, the device status state
//! machine, and activation of the device at DRIVER_OK.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::EventLoop;
use super::persist::{
    DeviceState, PersistError, QueueSnapshot, STATE_VERSION, VirtioState, queues_from,
};
use super::{Activation, F_VERSION_1, Interrupt, LogLimit, VirtioDevice};
use crate::devices::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c4c_5548; // "HULL"

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Offset of the queue notify register (where the ioeventfds sit).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset where the device-specific configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;

/// One device's transport.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    event_loop: EventLoop,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// SHM_SEL: the shared memory region the SHM_LEN and SHM_BASE
    /// registers describe (not saved: the driver selects before it reads).
    shm_sel: u32,
    bad_access: LogLimit,
}

impl MmioTransport {
    /// A transport for `device`; `queue_evts` (one per queue) are the
    /// ioeventfds the device manager registered at the notify register, and
    /// `interrupt` carries the irqfd.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        event_loop: EventLoop,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).expect("device queue sizes are powers of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            event_loop,
            interrupt,
            queue_evts,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            shm_sel: 0,
            bad_access: LogLimit::default(),
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_setup_allowed(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order of 3.1.1.
        if v & self.status != self.status {
            self.status |= STATUS_FAILED;
            return;
        }
        let new = v & !self.status;
        if new & STATUS_FEATURES_OK != 0 {
            let offered = lock(&self.device).features();
            let ok =
                self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear: the driver sees it did not stick.
                self.status = v & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if new & STATUS_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mem = &self.mem;
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.ready() && !q.is_valid(mem))
        {
            log::warn!("virtio: driver set up invalid queue {i}");
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let evts: Result<Vec<EventFd>, _> =
            self.queue_evts.iter().map(EventFd::try_clone).collect();
        let queue_evts = match evts {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio: cloning queue eventfds: {e}");
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        let queues: Result<Vec<Queue>, _> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect();
        let Ok(queues) = queues else {
            self.status |= STATUS_NEEDS_RESET;
            return;
        };
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            event_loop: self.event_loop.clone(),
        };
        let features = self.driver_features;
        match lock(&self.device).activate(activation, features) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio: activating the device: {e}");
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let dev = lock(&self.device);
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => dev.device_type(),
            0x0c => VENDOR,
            0x10 => {
                let f = dev.features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => {
                drop(dev);
                self.selected().map_or(0, |q| u32::from(q.max_size()))
            }
            0x44 => {
                drop(dev);
                self.selected().map_or(0, |q| u32::from(q.ready()))
            }
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // SHM_LEN_LOW/HIGH, SHM_BASE_LOW/HIGH of region SHM_SEL; a
            // region the device does not have reads as all ones (4.2.2).
            0xb0..=0xbc => {
                let (base, len) = dev.shm_region(self.shm_sel).unwrap_or((u64::MAX, u64::MAX));
                let v = if offset < 0xb8 { len } else { base };
                if offset & 4 == 0 {
                    v as u32
                } else {
                    (v >> 32) as u32
                }
            }
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if setup => {
                if let Some(q) = self.selected() {
                    // Queue::set_size keeps the old size for invalid values;
                    // is_valid() then refuses the queue at activation.
                    q.set_size(v as u16);
                }
            }
            0x44 if setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                // Normally caught by the ioeventfd; a write that reaches us
                // (no ioeventfd) is forwarded to the same eventfd.
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0xac => self.shm_sel = v,
            0x70 => self.set_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if setup => {
                if let Some(q) = self.selected() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        0x80 => q.set_desc_table_address(lo, hi),
                        0x90 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => {
                if self.bad_access.allow() {
                    log::debug!("virtio-mmio: ignored write of {v:#x} at {offset:#x}");
                }
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            if self.bad_access.allow() {
                log::debug!(
                    "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                    data.len()
                );
            }
            return;
        };
        if offset.is_multiple_of(4) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

/// What a transport saves: its registers, the queues as the driver set
/// them up, and the state of its device (whose own queues are where the
/// device is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub version: u32,
    pub queue_sel: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
    pub device: DeviceState,
}

impl MmioTransport {
    /// Pauses the device and saves the transport with it.
    pub fn save(&mut self) -> MmioTransportState {
        let device = lock(&self.device).save();
        MmioTransportState {
            version: STATE_VERSION,
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues: self.queues.iter().map(QueueSnapshot::of).collect(),
            device,
        }
    }

    /// A transport for a freshly created `device` that carries on from
    /// `state`: the device is restored, and serves again if it was active.
    /// The other arguments are those of [`MmioTransport::new`].
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        event_loop: EventLoop,
        interrupt: Interrupt,
        queue_evts: Vec<EventFd>,
        state: &MmioTransportState,
    ) -> Result<Self, PersistError> {
        if state.version != STATE_VERSION {
            return Err(PersistError::Version {
                found: state.version,
            });
        }
        let mut t = MmioTransport::new(device, mem, event_loop, interrupt, queue_evts);
        let queues = queues_from(&state.queues)?;
        let sizes: Vec<u16> = t.queues.iter().map(QueueT::max_size).collect();
        let saved: Vec<u16> = queues.iter().map(QueueT::max_size).collect();
        if sizes != saved {
            return Err(PersistError::Mismatch(format!(
                "the device had queues of {saved:?} entries, it has {sizes:?}"
            )));
        }
        t.queues = queues;
        t.queue_sel = state.queue_sel;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.status = state.status;
        t.config_generation = state.config_generation;
        t.interrupt.set_status(state.interrupt_status);
        let virtio: &VirtioState = state.device.virtio();
        if virtio.activated() != state.activated {
            return Err(PersistError::Mismatch(
                "the transport and its device disagree on whether it was activated".into(),
            ));
        }
        let activation = if state.activated {
            let queue_evts = t
                .queue_evts
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()
                .map_err(PersistError::Eventfd)?;
            let queues = queues_from(&virtio.queues)?;
            // The state is as untrusted as the driver's registers were.
            if let Some(i) = queues.iter().position(|q| q.ready() && !q.is_valid(&t.mem)) {
                return Err(PersistError::BadQueue(i));
            }
            Some(Activation {
                mem: t.mem.clone(),
                queues,
                queue_evts,
                interrupt: t.interrupt.clone(),
                event_loop: t.event_loop.clone(),
            })
        } else {
            None
        };
        lock(&t.device).restore(&state.device, activation)?;
        t.activated = state.activated;
        if lock(&t.device).config_changed_at_restore() {
            // The driver re-reads the configuration (the generation tells
            // it the bytes moved) when the interrupt arrives.
            t.config_generation = t.config_generation.wrapping_add(1);
            t.interrupt.signal_config();
        }
        Ok(t)
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::ActivateError;
    use super::*;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Dummy {
        activated: Option<u64>,
        resets: u32,
    }
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn activate(&mut self, _a: Activation, f: u64) -> Result<(), ActivateError> {
            self.activated = Some(f);
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn pause(&mut self) {}
        fn resume(&mut self) -> Result<(), ActivateError> {
            Ok(())
        }
        fn save(&mut self) -> DeviceState {
            DeviceState::Rng(super::super::rng::RngState {
                virtio: VirtioState::new(0, Vec::new()),
            })
        }
        fn restore(
            &mut self,
            _state: &DeviceState,
            _a: Option<Activation>,
        ) -> Result<(), PersistError> {
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let el = super::super::event_loop::test_loop();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let evts = vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()];
        (MmioTransport::new(dev.clone(), mem, el, irq, evts), dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features_hi: u32) {
        w(t, 0x70, STATUS_ACKNOWLEDGE);
        w(t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, 0x24, 1);
        w(t, 0x20, features_hi);
        w(
            t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport) {
        w(t, 0x30, 0);
        w(t, 0x38, 16);
        w(t, 0x80, 0x1000);
        w(t, 0x90, 0x2000);
        w(t, 0xa0, 0x3000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 4);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 in the high word");
        let mut c = [0u8; 2];
        t.read(CONFIG_OFFSET + 2, &mut c);
        assert_eq!(c, [3, 4]);
    }

    #[test]
    fn shared_memory_registers_read_all_ones_without_a_region() {
        let (mut t, _) = transport();
        w(&mut t, 0xac, 0);
        for off in [0xb0, 0xb4, 0xb8, 0xbc] {
            assert_eq!(r(&mut t, off), u32::MAX, "register {off:#x}");
        }
    }

    #[test]
    fn full_negotiation_activates_once() {
        let (mut t, dev) = transport();
        negotiate(&mut t, 1);
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        setup_queue(&mut t);
        w(&mut t, 0x70, 0xf);
        assert_eq!(dev.lock().unwrap().activated, Some(F_VERSION_1));
        assert_eq!(r(&mut t, 0x44), 1);
        // Reset by writing 0.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, 0x44), 0);
    }

    #[test]
    fn features_without_version_1_or_unknown_ones_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 0);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, 0x8000_0000); // not offered
        negotiate(&mut t, 1);
        assert_eq!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn queue_outside_memory_is_not_activated() {
        let (mut t, dev) = transport();
        negotiate(&mut t, 1);
        w(&mut t, 0x38, 16);
        w(&mut t, 0x80, 0xffff_0000); // beyond the 1 MiB of memory
        w(&mut t, 0x90, 0x2000);
        w(&mut t, 0xa0, 0x3000);
        w(&mut t, 0x44, 1);
        w(&mut t, 0x70, 0xf);
        assert_eq!(dev.lock().unwrap().activated, None);
        assert_ne!(r(&mut t, 0x70) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn status_bits_cannot_be_taken_back_and_odd_sizes_are_ignored() {
        let (mut t, _) = transport();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE);
        assert_ne!(r(&mut t, 0x70) & STATUS_FAILED, 0);
        t.write(0x70, &[1, 0]); // 2-byte access: ignored
        let mut b = [0u8; 2];
        t.read(0x00, &mut b);
        assert_eq!(b, [0, 0]);
    }

    /// The driver's side of queue 0 as `setup_queue` placed it: descriptor
    /// i at 0x1000 + 16 i, the available ring at 0x2000, the used ring at
    /// 0x3000. Publishes a 64-byte device-writable buffer at `addr`.
    fn publish(mem: &GuestMemoryMmap, slot: u16, addr: u64) {
        use vm_memory::Bytes;
        let d = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(addr, 64, 2, 0),
        );
        mem.write_obj(d, GuestAddress(0x1000 + u64::from(slot) * 16))
            .unwrap();
        mem.write_obj(slot, GuestAddress(0x2004 + u64::from(slot) * 2))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(0x2002)).unwrap();
    }

    fn wait_used(mem: &GuestMemoryMmap, n: u16) {
        use vm_memory::Bytes;
        for _ in 0..1000 {
            if mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap() == n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the device never returned buffer {n}");
    }

    /// A transport serving an rng device, with features negotiated, its
    /// queue configured and a request answered, is saved; a fresh transport
    /// and device restored from the state over the same guest memory read
    /// the same registers and answer the next request.
    #[test]
    fn a_restored_transport_and_device_carry_on() {
        use vm_memory::Bytes;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let el = super::super::event_loop::test_loop();
        let dev = Arc::new(Mutex::new(super::super::rng::Rng::new()));
        let kick = evt();
        let mut t = MmioTransport::new(
            dev,
            mem.clone(),
            el.clone(),
            Interrupt::new(evt()),
            vec![kick.try_clone().unwrap()],
        );
        negotiate(&mut t, 1);
        setup_queue(&mut t);
        w(&mut t, 0x70, 0xf);
        publish(&mem, 0, 0x8000);
        kick.write(1).unwrap();
        wait_used(&mem, 1);

        let state = t.save();
        let json = serde_json::to_string(&state).unwrap();
        // The saved (paused) device no longer serves its queue.
        publish(&mem, 1, 0x9000);
        kick.write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
        drop(t);

        let state: MmioTransportState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.device.virtio().queues[0].next_used, 1);
        let kick = evt();
        let dev = Arc::new(Mutex::new(super::super::rng::Rng::new()));
        let mut t = MmioTransport::restore(
            dev,
            mem.clone(),
            el,
            Interrupt::new(evt()),
            vec![kick.try_clone().unwrap()],
            &state,
        )
        .unwrap();
        assert_eq!(r(&mut t, 0x70), 0xf);
        assert_eq!(r(&mut t, 0x44), 1, "queue 0 ready");
        assert_eq!(r(&mut t, 0x60), state.interrupt_status);
        // The buffer published while paused, then kicked on the new eventfd.
        kick.write(1).unwrap();
        wait_used(&mem, 2);
        let mut out = [0u8; 64];
        mem.read_slice(&mut out, GuestAddress(0x9000)).unwrap();
        assert!(
            out.iter().any(|&b| b != 0),
            "the restored rng filled nothing"
        );
        // A driver reset still works on the restored transport.
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x44), 0);
    }

    #[test]
    fn a_state_of_another_version_is_refused() {
        let (mut t, dev) = transport();
        let mut state = t.save();
        state.version += 1;
        let el = super::super::event_loop::test_loop();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let err = MmioTransport::restore(dev, mem, el, irq, Vec::new(), &state)
            .err()
            .expect("restored from a future version");
        assert!(matches!(err, PersistError::Version { .. }), "{err}");
    }

    #[test]
    fn a_saved_queue_outside_guest_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let el = super::super::event_loop::test_loop();
        let dev = Arc::new(Mutex::new(super::super::rng::Rng::new()));
        let mut t = MmioTransport::new(
            dev,
            mem.clone(),
            el.clone(),
            Interrupt::new(evt()),
            vec![evt()],
        );
        negotiate(&mut t, 1);
        setup_queue(&mut t);
        w(&mut t, 0x70, 0xf);
        let mut state = t.save();
        let DeviceState::Rng(rng) = &mut state.device else {
            panic!("an rng saved as {}", state.device.kind());
        };
        rng.virtio.queues[0].desc_table = 0xffff_0000; // beyond the 1 MiB
        let dev = Arc::new(Mutex::new(super::super::rng::Rng::new()));
        let err = MmioTransport::restore(dev, mem, el, Interrupt::new(evt()), vec![evt()], &state)
            .err()
            .expect("restored a queue outside guest memory");
        assert_eq!(err.to_string(), "saved queue 0 is not a valid queue");
    }
}
