//! The virtio-net device as the transport sees it: the features offered,
//! the configuration space (the MAC), activation onto the event loop, and
//! the state a snapshot saves.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use super::backend::{Backend, BackendParts};
use super::persist::NetState;
use super::tap::{OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO, Tap, TapError};
use super::*;
use crate::devices::virtio::event_loop::EventLoop;
use crate::devices::virtio::persist::{DeviceState, PersistError, QueueSnapshot, VirtioState};
use crate::devices::virtio::{
    ActivateError, Activation, F_EVENT_IDX, F_VERSION_1, TYPE_NET, VirtioDevice, read_config_bytes,
};

/// VIRTIO_RING_F_INDIRECT_DESC: Linux puts a frame's buffers in a table of
/// their own, one ring slot per frame.
const F_INDIRECT_DESC: u64 = 1 << 28;

/// A virtio-net device over a tap.
pub struct Net {
    tap: Tap,
    mac: Option<[u8; 6]>,
    features: u64,
    acked: u64,
    /// mac (6 bytes), status (2 bytes; F_STATUS is not offered).
    config: [u8; 8],
    active: Option<Active>,
}

/// The backend on the event loop and its registrations (none while
/// paused).
struct Active {
    backend: Arc<Mutex<Backend>>,
    event_loop: EventLoop,
    tokens: Vec<u64>,
}

impl Active {
    /// Watches the queue eventfds and the tap (for what the backend waits
    /// on), then serves what waited meanwhile.
    fn watch(&mut self) -> Result<(), ActivateError> {
        let fds = {
            let b = lock(&self.backend);
            [b.rx_evt.as_raw_fd(), b.tx_evt.as_raw_fd(), b.tap_fd()]
        };
        // The tap is watched for nothing until the backend knows its token
        // (`watch_tap`): an event handled before that could not change what
        // the loop watches.
        let interests = [EventSet::IN, EventSet::IN, EventSet::empty()];
        for (fd, events) in fds.into_iter().zip(interests) {
            match self.event_loop.add(fd, events, self.backend.clone()) {
                Ok(t) => self.tokens.push(t),
                Err(e) => {
                    self.unwatch();
                    return Err(ActivateError::EventLoop(e));
                }
            }
        }
        let mut b = lock(&self.backend);
        if let Some(&t) = self.tokens.get(2) {
            b.watch_tap(self.event_loop.clone(), t);
        }
        b.start();
        Ok(())
    }

    /// Leaves the event loop. Once the backend's lock is taken here, no
    /// handler runs any more: the device touches neither guest memory nor
    /// its queues until [`Active::watch`].
    fn unwatch(&mut self) {
        for t in self.tokens.drain(..) {
            self.event_loop.remove(t);
        }
        lock(&self.backend).tap_watch = None;
    }
}

fn lock(b: &Mutex<Backend>) -> std::sync::MutexGuard<'_, Backend> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl Net {
    /// A device on `tap`; the guest sees `mac` (it picks a random one
    /// without).
    pub fn new(tap: Tap, mac: Option<[u8; 6]>) -> Net {
        let mut features = F_VERSION_1
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | F_CSUM
            | F_GUEST_CSUM
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_MRG_RXBUF;
        if tap.supports_ufo() {
            features |= F_HOST_UFO | F_GUEST_UFO;
        }
        if mac.is_some() {
            features |= F_MAC;
        }
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac.unwrap_or_default());
        Net {
            tap,
            mac,
            features,
            acked: 0,
            config,
            active: None,
        }
    }

    /// Opens the tap a configuration names.
    pub fn from_config(cfg: &crate::config::NetConfig) -> Result<Net, TapError> {
        let tap = match (&cfg.tap, cfg.fd) {
            (Some(name), _) => Tap::open(name)?,
            (None, Some(fd)) => Tap::from_fd(fd)?,
            (None, None) => return Err(TapError::Name(String::new())),
        };
        Ok(Net::new(tap, cfg.mac.map(|m| m.0)))
    }

    /// The MAC address the guest is shown, if any.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// What the active device has counted (zeros when inactive).
    pub fn stats(&self) -> NetStats {
        self.active
            .as_ref()
            .map(|a| lock(&a.backend).stats())
            .unwrap_or_default()
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    /// The offloads the guest's driver accepted, for the tap.
    pub(crate) fn offloads_for(acked: u64) -> u32 {
        if acked & F_GUEST_CSUM == 0 {
            return 0;
        }
        let mut flags = OFFLOAD_CSUM;
        for (feature, flag) in [
            (F_GUEST_TSO4, OFFLOAD_TSO4),
            (F_GUEST_TSO6, OFFLOAD_TSO6),
            (F_GUEST_UFO, OFFLOAD_UFO),
        ] {
            if acked & feature != 0 {
                flags |= flag;
            }
        }
        flags
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, a: Activation, acked: u64) -> Result<(), ActivateError> {
        if a.queues.len() != 2 || a.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: a.queues.len(),
                want: 2,
            });
        }
        // Without them the tap just hands over plain frames: worth a warning,
        // not a dead device.
        if let Err(e) = self.tap.set_offload(Self::offloads_for(acked)) {
            log::warn!("virtio-net tap {}: {e}", self.tap.name());
        }
        let tap = self.tap.try_clone().map_err(|error| ActivateError::Clone {
            what: "the tap",
            error,
        })?;
        let mut queues = a.queues.into_iter();
        let mut evts = a.queue_evts.into_iter();
        let (Some(rxq), Some(txq), Some(rx_evt), Some(tx_evt)) =
            (queues.next(), queues.next(), evts.next(), evts.next())
        else {
            return Err(ActivateError::QueueCount { got: 0, want: 2 });
        };
        let backend = Backend::new(BackendParts {
            mem: a.mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            tap,
            interrupt: a.interrupt,
            acked_features: acked,
        });
        let mut active = Active {
            backend: Arc::new(Mutex::new(backend)),
            event_loop: a.event_loop,
            tokens: Vec::new(),
        };
        active.watch()?;
        self.acked = acked;
        self.active = Some(active);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut a) = self.active.take() {
            a.unwatch();
        }
        let _ = self.tap.set_offload(0);
        self.acked = 0;
    }
    fn pause(&mut self) {
        if let Some(a) = &mut self.active {
            a.unwatch();
        }
    }
    fn resume(&mut self) -> Result<(), ActivateError> {
        match &mut self.active {
            Some(a) if a.tokens.is_empty() => a.watch(),
            _ => Ok(()),
        }
    }
    fn save(&mut self) -> DeviceState {
        self.pause();
        let queues = match &self.active {
            Some(a) => lock(&a.backend)
                .queue_states()
                .into_iter()
                .map(QueueSnapshot::from)
                .collect(),
            None => Vec::new(),
        };
        DeviceState::Net(NetState {
            virtio: VirtioState::new(self.acked, queues),
            mac: self.mac,
            offered_features: self.features,
        })
    }
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError> {
        self.restore_state(state, a)
    }
}

impl Drop for Net {
    /// The backend leaves the event loop with the device.
    fn drop(&mut self) {
        if let Some(mut a) = self.active.take() {
            a.unwatch();
        }
    }
}
