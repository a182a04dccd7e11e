//! virtio-vsock with a Unix-socket host side, as Firecracker users know it:
//! - a host process connects to the UDS path and writes `CONNECT <port>\n`;
//!   once a guest listener on that port accepts, it reads `OK <hostport>\n`
//!   and the stream is connected;
//! - a guest connection to host port P is connected to a Unix listener at
//!   `<UDS path>_P`.
//!
//! Streams use credit-based flow control both ways: the device reads from a
//! host socket only as much as the guest has room for, and keeps at most
//! [`CONN_BUF`] bytes per connection that the host socket has not taken yet
//! (the guest is told so through buf_alloc/fwd_cnt). Everything in a packet
//! is untrusted: lengths are bounded, unknown operations and addresses are
//! answered with a reset.
//!
//! The parts: [`packet`] (the header, tx packets read from guest memory),
//! [`connection`] (one stream and its state), [`muxer`] (the queues against
//! the host sockets), [`device`] (the virtio device), [`persist`] (its saved
//! state; host connections do not survive a restore, and the guest is told
//! so with a transport reset event).

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
pub mod persist;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::Vsock;
pub use packet::Header;
pub use persist::VsockState;

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Bytes of guest data per connection the device holds for a slow host reader.
pub const CONN_BUF: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {path}: {error}")]
    Listen {
        path: PathBuf,
        error: std::io::Error,
    },
}
