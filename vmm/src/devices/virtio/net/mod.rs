//! virtio-net backed by a Linux tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
//!
//! Frames move straight between the tap and guest memory: one readv per
//! received frame into the guest's rx buffers, one writev per transmitted
//! chain out of its tx buffers, the virtio-net header passed through as the
//! tap's own vnet header (same layout, 12 bytes). So checksum offload and
//! segmentation offload work both ways: the guest's partial checksums and
//! large segments go to the host stack as they are (it finishes them), and
//! the host hands the guest large segments once the driver accepts them
//! (`TUNSETOFFLOAD`).
//!
//! Layout, after Firecracker's `devices/virtio/net/`:
//! - [`device`]: the device as the transport sees it (features, config
//!   space, activation, saved state);
//! - [`tap`]: opening a tap by name or taking an open one, its ioctls;
//! - `backend`, `rx`, `tx`: the queues' work on the event loop;
//! - [`persist`]: the serde state a snapshot keeps.

pub mod device;
pub mod persist;
pub mod tap;

pub(crate) mod backend;
mod counts;
mod rx;
mod tx;

#[cfg(test)]
mod tests;

pub use device::Net;
pub use persist::NetState;
pub use tap::{Tap, TapError};

use vm_memory::ByteValued;

/// Queue indexes: receive (device to driver) and transmit.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;

/// Feature bits (virtio 1.1, 5.1.3).
pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_UFO: u64 = 1 << 10;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;
pub const F_HOST_UFO: u64 = 1 << 14;
pub const F_MRG_RXBUF: u64 = 1 << 15;

/// Header flag: the checksum from `csum_start` on is left for the receiver.
pub const HDR_F_NEEDS_CSUM: u8 = 1;
/// Header GSO types.
pub const HDR_GSO_NONE: u8 = 0;
pub const HDR_GSO_TCPV4: u8 = 1;
pub const HDR_GSO_UDP: u8 = 3;
pub const HDR_GSO_TCPV6: u8 = 4;

/// Bytes of the header in front of every frame (virtio_net_hdr_v1, with
/// `num_buffers`: every VERSION_1 device uses it).
pub const HDR_LEN: usize = std::mem::size_of::<VnetHeader>();
/// Largest Ethernet frame a segmentation offload produces: a 64 KiB IP
/// packet, an Ethernet header and a VLAN tag.
pub const MAX_GSO_FRAME: usize = 65535 + 14 + 4;
/// Largest frame without segmentation offload (1500 bytes MTU, VLAN tag).
pub const MAX_PLAIN_FRAME: usize = 1500 + 14 + 4;
/// Largest chain the guest may transmit, header included.
pub const MAX_TX_BYTES: usize = HDR_LEN + MAX_GSO_FRAME;
/// Frames received per wake-up; what is left waits for the next round of
/// the event loop, so the other devices get their turn.
pub const RX_BATCH: usize = 64;
/// Chains transmitted per wake-up, for the same reason.
pub const TX_BATCH: usize = 128;
/// Most guest buffers (descriptors) one frame may use, either way: a
/// readv/writev takes at most 1024 iovecs.
pub const MAX_FRAME_SEGS: usize = 512;

/// The header in front of every frame, the tap's and the guest's alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

// SAFETY: a C struct of integers laid out without padding (2 + 5 * 2 bytes);
// every byte pattern is a valid value.
unsafe impl ByteValued for VnetHeader {}

/// Offset of `num_buffers` in [`VnetHeader`].
pub const NUM_BUFFERS_OFFSET: usize = 10;

/// What the device counts (for tests and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames the tap gave that did not fit the guest's buffers.
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Malformed chains and frames the tap refused.
    pub tx_dropped: u64,
}
