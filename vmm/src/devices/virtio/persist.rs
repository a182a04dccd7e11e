//! Saved state of virtio devices, for snapshots: what a device needs, with
//! guest memory, to carry on where it stopped. Every state carries
//! [`STATE_VERSION`]; a state of another version is refused rather than
//! guessed at. Saved state is as untrusted as the snapshot file it comes
//! from: queues are rebuilt through virtio-queue's checks.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::block::BlockState;
use super::fs::FsState;
use super::net::NetState;
use super::rng::RngState;
use super::vsock::VsockState;
use super::{ActivateError, Activation};

/// Version of the state formats in this module and the devices'.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("saved device state has format version {found}, this hull-vmm reads {STATE_VERSION}")]
    Version { found: u32 },
    #[error("saved state is of a {found} device, not a {want} device")]
    WrongDevice {
        found: &'static str,
        want: &'static str,
    },
    #[error("saved queue {0} is not a valid queue")]
    BadQueue(usize),
    #[error("saved state does not match the device: {0}")]
    Mismatch(String),
    #[error("cloning the queue eventfds: {0}")]
    Eventfd(std::io::Error),
    #[error("reactivating the restored device: {0}")]
    Activate(super::ActivateError),
}

/// One virtqueue as saved (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl From<QueueState> for QueueSnapshot {
    fn from(s: QueueState) -> Self {
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl QueueSnapshot {
    pub fn of(q: &Queue) -> Self {
        q.state().into()
    }
}

/// Rebuilds queues through virtio-queue's checks; `i` names the bad one.
pub fn queues_from(saved: &[QueueSnapshot]) -> Result<Vec<Queue>, PersistError> {
    saved
        .iter()
        .enumerate()
        .map(|(i, s)| Queue::try_from(QueueState::from(*s)).map_err(|_| PersistError::BadQueue(i)))
        .collect()
}

/// What every virtio device saves: its negotiated features and, once
/// activated, its live queues (where the device, not the driver, is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioState {
    pub version: u32,
    pub acked_features: u64,
    /// Empty while the device is not activated.
    pub queues: Vec<QueueSnapshot>,
}

impl VirtioState {
    pub fn new(acked_features: u64, queues: Vec<QueueSnapshot>) -> Self {
        VirtioState {
            version: STATE_VERSION,
            acked_features,
            queues,
        }
    }

    pub fn check_version(&self) -> Result<(), PersistError> {
        if self.version == STATE_VERSION {
            Ok(())
        } else {
            Err(PersistError::Version {
                found: self.version,
            })
        }
    }

    pub fn activated(&self) -> bool {
        !self.queues.is_empty()
    }

    /// After a restore: a device saved activated serves its queues again
    /// (`a` carries them) through `activate`, with the saved features.
    pub fn reactivate(
        &self,
        a: Option<Activation>,
        activate: impl FnOnce(Activation, u64) -> Result<(), ActivateError>,
    ) -> Result<(), PersistError> {
        match a {
            Some(a) if self.activated() => {
                activate(a, self.acked_features).map_err(PersistError::Activate)
            }
            _ => Ok(()),
        }
    }
}

/// The state of any hull virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Rng(RngState),
    Vsock(VsockState),
    Net(NetState),
    Fs(FsState),
}

impl DeviceState {
    pub fn virtio(&self) -> &VirtioState {
        match self {
            DeviceState::Block(s) => &s.virtio,
            DeviceState::Rng(s) => &s.virtio,
            DeviceState::Vsock(s) => &s.virtio,
            DeviceState::Net(s) => &s.virtio,
            DeviceState::Fs(s) => &s.virtio,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "block",
            DeviceState::Rng(_) => "rng",
            DeviceState::Vsock(_) => "vsock",
            DeviceState::Net(_) => "net",
            DeviceState::Fs(_) => "fs",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn queue_state_round_trips_and_bad_queues_are_refused() {
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_next_avail(5);
        q.set_ready(true);
        let snap = QueueSnapshot::of(&q);
        let json = serde_json::to_string(&snap).unwrap();
        let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
        let qs = queues_from(&[back]).unwrap();
        assert_eq!(qs[0].state(), q.state());
        let bad = QueueSnapshot { size: 3, ..back }; // not a power of two
        assert!(matches!(
            queues_from(&[back, bad]),
            Err(PersistError::BadQueue(1))
        ));
    }

    #[test]
    fn other_versions_are_refused() {
        let mut s = VirtioState::new(0, vec![]);
        assert!(s.check_version().is_ok());
        s.version = 2;
        assert_eq!(
            s.check_version().unwrap_err().to_string(),
            "saved device state has format version 2, this hull-vmm reads 1"
        );
    }
}
