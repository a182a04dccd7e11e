//! virtio devices over the MMIO transport (virtio 1.1, MMIO version 2).
//!
//! A device implements [`VirtioDevice`]; the [`mmio::MmioTransport`] gives it
//! registers on the MMIO bus; the device manager wires notifications
//! (ioeventfd per queue) and the interrupt (irqfd); once the driver sets
//! DRIVER_OK the device is activated with its queues and registers its work
//! with the one [`event_loop::EventLoop`] thread. Everything the guest puts
//! in a queue is untrusted: devices answer malformed requests with an error
//! status or drop them, and never touch memory outside the guest's.
//!
//! Devices own their state: each keeps its live queues (the worker serving
//! them is reachable from the device), can pause, and saves a versioned
//! serde state ([`persist`]) that, with guest memory, restores a fresh
//! device that carries on.

pub mod block;
pub mod event_loop;
pub mod fs;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_queue;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use event_loop::EventLoop;
use persist::{DeviceState, PersistError};

/// Device types (virtio 1.1, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// VIRTIO_F_VERSION_1: every hull device is a modern (1.x) device.
pub const F_VERSION_1: u64 = 1 << 32;

/// VIRTIO_RING_F_EVENT_IDX: the guest and the device tell each other when
/// they want a notification, so a busy queue costs fewer exits and interrupts.
pub const F_EVENT_IDX: u64 = 1 << 29;

/// Interrupt status bit: a used buffer was added.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// The device's interrupt: status bits the transport exposes and an eventfd
/// bound to the device's GSI with an irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    evt: Arc<EventFd>,
}

impl Interrupt {
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            evt: Arc::new(evt),
        }
    }

    /// Tells the guest that used buffers are waiting.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::warn!("virtio interrupt: {e}");
        }
    }

    /// Tells the guest that the device's configuration changed.
    pub fn signal_config(&self) {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::warn!("virtio interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status bits a snapshot saved.
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver gave {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid (addresses outside guest memory or bad size)")]
    BadQueue(usize),
    #[error("registering with the event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("cloning {what}: {error}")]
    Clone {
        what: &'static str,
        error: std::io::Error,
    },
}

/// What the transport hands a device when the driver is ready.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
    pub interrupt: Interrupt,
    pub event_loop: EventLoop,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (including [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads from the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, a: Activation, acked_features: u64) -> Result<(), ActivateError>;
    /// Stops serving after a driver reset; the device may be activated again.
    fn reset(&mut self) {}
    /// Stops serving for a snapshot: once this returns the device touches
    /// neither guest memory nor its queues. A paused device is saved, then
    /// dropped, reset or resumed.
    fn pause(&mut self);
    /// Serves again after [`VirtioDevice::pause`] (a no-op otherwise).
    fn resume(&mut self) -> Result<(), ActivateError>;
    /// The device's state (pausing it first): with guest memory, enough for
    /// [`VirtioDevice::restore`] on a fresh device to carry on.
    fn save(&mut self) -> DeviceState;
    /// Takes over `state` on a freshly created device. `a` is given when the
    /// saved device was activated; its queues are those of the state
    /// (`persist::queues_from`), and the device starts serving them.
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError>;
    /// After [`VirtioDevice::restore`]: the configuration is not the one
    /// the guest saw (a disk slot got its disk), so the transport raises a
    /// configuration-change interrupt.
    fn config_changed_at_restore(&self) -> bool {
        false
    }
    /// Shared memory region `id` (virtio 1.2, 2.10): its guest-physical
    /// address and length, if the device has one (virtio-fs: 0 is the DAX
    /// cache window).
    fn shm_region(&self, _id: u32) -> Option<(u64, u64)> {
        None
    }
}

/// Copies the bytes of `config` at `offset` into `data` (zeros past its end).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

/// A rate limiter for log lines about guest misbehaviour: the first few of
/// each kind are logged, then one in a thousand.
#[derive(Default)]
pub struct LogLimit(u64);

impl LogLimit {
    pub fn allow(&mut self) -> bool {
        self.0 += 1;
        self.0 <= 10 || self.0.is_multiple_of(1000)
    }
}
pub mod queue_worker;

/// Decides, after each round of popping a queue's chains, whether another
/// round is due. Notifications are re-enabled each time, and another round
/// runs while the guest has made more buffers available. A guest can claim
/// more buffers than can be popped (an available index more than the queue
/// size ahead). Taken at its word, that would keep the device, and the one
/// event-loop thread with it, spinning forever. So after two rounds in a
/// row that popped nothing, the device waits for the next notification.
#[derive(Default)]
pub struct Rounds {
    empty: u8,
}

impl Rounds {
    /// `popped`: whether the round that just ended popped any chain.
    pub fn again(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        popped: bool,
        errors: &mut LogLimit,
    ) -> bool {
        self.empty = if popped { 0 } else { self.empty + 1 };
        match queue.enable_notification(mem) {
            Ok(true) if self.empty < 2 => true,
            Ok(true) => {
                if errors.allow() {
                    log::warn!(
                        "virtio: the guest's available index is past what its queue holds; waiting for its next notification"
                    );
                }
                false
            }
            Ok(false) => false,
            Err(e) => {
                if errors.allow() {
                    log::warn!("virtio: queue unusable: {e}");
                }
                false
            }
        }
    }
}

/// xorshift64 for the randomized device tests: the same sequence on every
/// run, so a failure reproduces.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Iterations of each randomized device test: `HULL_FUZZ_ITERS` (README,
/// "Fuzzing"), a bounded default otherwise.
#[cfg(test)]
pub(crate) fn fuzz_iters() -> u64 {
    std::env::var("HULL_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}
