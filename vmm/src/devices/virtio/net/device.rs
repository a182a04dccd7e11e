//! The virtio-net device as the transport sees it: the features offered,
//! the configuration space (the MAC), activation onto the event loop, and
//! the state a snapshot saves.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use super::backend::{Backend, BackendParts};
use super::persist::{NET_STATE_VERSION, NetState, NetStateError};
use super::tap::{OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO, Tap, TapError};
use super::*;
use crate::devices::virtio::event_loop::EventLoop;
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

/// The backend on the event loop and its registrations.
struct Active {
    backend: Arc<Mutex<Backend>>,
    event_loop: EventLoop,
    tokens: Vec<u64>,
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

    /// A device restored from `state` on a tap of its own; the transport
    /// then activates it with [`NetState::live_queues`] and the features
    /// the state holds.
    pub fn restore(tap: Tap, state: &NetState) -> Result<Net, NetStateError> {
        state.validate()?;
        let mut net = Net::new(tap, state.mac);
        // What this tap can do may differ from the saved one's (UFO).
        if state.offered_features & !net.features != 0 {
            return Err(NetStateError::Features {
                acked: state.offered_features,
                offered: net.features,
            });
        }
        net.features = state.offered_features;
        net.acked = state.acked_features;
        Ok(net)
    }

    /// The device's state for a snapshot (the VM's vCPUs stopped first).
    pub fn save(&self) -> NetState {
        let queues = match &self.active {
            Some(a) => lock(&a.backend)
                .queue_states()
                .into_iter()
                .map(Into::into)
                .collect(),
            None => Vec::new(),
        };
        NetState {
            version: NET_STATE_VERSION,
            mac: self.mac,
            offered_features: self.features,
            acked_features: self.acked,
            queues,
        }
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
        let device_err = |what: &str, e: &dyn std::fmt::Display| {
            ActivateError::Device(format!("virtio-net tap {}: {what}: {e}", self.tap.name()))
        };
        // Without them the tap just hands over plain frames: worth a warning,
        // not a dead device.
        if let Err(e) = self.tap.set_offload(Self::offloads_for(acked)) {
            log::warn!("virtio-net tap {}: {e}", self.tap.name());
        }
        let tap = self.tap.try_clone().map_err(|e| device_err("dup", &e))?;
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
        let fds = [
            backend.rx_evt.as_raw_fd(),
            backend.tx_evt.as_raw_fd(),
            backend.tap_fd(),
        ];
        let backend = Arc::new(Mutex::new(backend));
        let mut tokens = Vec::new();
        for fd in fds {
            match a.event_loop.add(fd, EventSet::IN, backend.clone()) {
                Ok(t) => tokens.push(t),
                Err(e) => {
                    for t in tokens {
                        a.event_loop.remove(t);
                    }
                    return Err(ActivateError::EventLoop(e));
                }
            }
        }
        {
            let mut b = lock(&backend);
            b.tap_watch = tokens.get(2).map(|&t| (a.event_loop.clone(), t));
            b.start();
        }
        self.acked = acked;
        self.active = Some(Active {
            backend,
            event_loop: a.event_loop,
            tokens,
        });
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
            for t in a.tokens {
                a.event_loop.remove(t);
            }
        }
        let _ = self.tap.set_offload(0);
        self.acked = 0;
    }
}
