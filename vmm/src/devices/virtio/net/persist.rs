//! The state of a virtio-net device a snapshot keeps: what the guest
//! negotiated and where its queues stand. The tap is not in it: a restored
//! VM gets a tap of its own (by name or fd), as a fresh one does.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// Version of [`NetState`]'s layout; bumped when a field changes meaning.
pub const NET_STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetStateError {
    #[error("virtio-net state version {0}, this hull-vmm reads version {NET_STATE_VERSION}")]
    Version(u32),
    #[error("virtio-net state: features {acked:#x} were never offered ({offered:#x})")]
    Features { acked: u64, offered: u64 },
    #[error("virtio-net state has {0} queues, the device has 2")]
    QueueCount(usize),
    #[error("virtio-net state: queue {index} is invalid: {cause:?}")]
    Queue {
        index: usize,
        cause: virtio_queue::Error,
    },
}

/// One queue, as virtio-queue's [`QueueState`] holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedQueue {
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

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        QueueState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
        }
    }
}

/// A virtio-net device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    pub version: u32,
    /// The MAC address the guest was given, if any.
    pub mac: Option<[u8; 6]>,
    /// Features the device offered and those the driver accepted.
    pub offered_features: u64,
    pub acked_features: u64,
    /// rx then tx; empty when the driver had not started the device.
    pub queues: Vec<SavedQueue>,
}

impl NetState {
    /// Checks the state before a device is made from it.
    pub fn validate(&self) -> Result<(), NetStateError> {
        if self.version != NET_STATE_VERSION {
            return Err(NetStateError::Version(self.version));
        }
        if self.acked_features & !self.offered_features != 0 {
            return Err(NetStateError::Features {
                acked: self.acked_features,
                offered: self.offered_features,
            });
        }
        if !self.queues.is_empty() && self.queues.len() != 2 {
            return Err(NetStateError::QueueCount(self.queues.len()));
        }
        Ok(())
    }

    /// The saved queues as live ones (virtio-queue checks each); the
    /// transport activates the restored device with them.
    pub fn live_queues(&self) -> Result<Vec<Queue>, NetStateError> {
        self.queues
            .iter()
            .enumerate()
            .map(|(index, q)| {
                Queue::try_from(QueueState::from(*q))
                    .map_err(|cause| NetStateError::Queue { index, cause })
            })
            .collect()
    }
}
