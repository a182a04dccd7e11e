//! The vsock device's saved state and its restore. Host connections are
//! Unix sockets of the process that saved, so none survives: the restored
//! device tells the guest with VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on its
//! event queue (virtio 1.1, 5.10.6.6), and the guest drops its streams and
//! connects again, as after a live migration under Firecracker. A device
//! saved with no connection at all sends none (see [`VsockState`]).

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::super::persist::{DeviceState, PersistError, VirtioState};
use super::super::{Activation, VirtioDevice};
use super::device::{Vsock, lock};
use super::muxer::Muxer;

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, the id of the only vsock event.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// What a vsock device saves: its CID and where its three queues are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    pub virtio: VirtioState,
    pub cid: u64,
    /// Host connections (and handshakes) the device had when saved. A
    /// snapshot without any (a template, saved before the host ever
    /// connected) needs no transport reset; and sending one would race
    /// with the first connection to the restored guest, which the guest
    /// may accept and then reset.
    pub connections: usize,
}

impl Vsock {
    pub(super) fn restore_state(
        &mut self,
        state: &DeviceState,
        a: Option<Activation>,
    ) -> Result<(), PersistError> {
        let DeviceState::Vsock(s) = state else {
            return Err(PersistError::WrongDevice {
                found: state.kind(),
                want: "vsock",
            });
        };
        s.virtio.check_version()?;
        if s.cid != self.cid {
            return Err(PersistError::Mismatch(format!(
                "the guest CID was {}, it is {}",
                s.cid, self.cid
            )));
        }
        let Some(a) = a.filter(|_| s.virtio.activated()) else {
            return Ok(());
        };
        self.activate(a, s.virtio.acked_features)
            .map_err(PersistError::Activate)?;
        if let Some(active) = self.active().filter(|_| s.connections > 0) {
            let mut m = lock(&active.muxer);
            m.reset_pending = true;
            m.send_transport_reset();
            m.notify_guest();
        }
        Ok(())
    }
}

impl Muxer {
    /// Puts the transport reset event in the guest's next event buffer; if
    /// it has none yet, the event waits for one.
    pub(super) fn send_transport_reset(&mut self) {
        if !self.reset_pending || self.paused {
            return;
        }
        let mem = self.mem.clone();
        let Some(chain) = self.q.ev.pop_descriptor_chain(&mem) else {
            let _ = self.q.ev.enable_notification(&mem);
            return;
        };
        let head = chain.head_index();
        let written = match chain.writer(&mem) {
            Ok(mut w) if w.available_bytes() >= 4 => {
                w.write_obj(EVENT_TRANSPORT_RESET.to_le()).map_or(0, |()| 4)
            }
            _ => 0,
        };
        if written == 0 && self.errors.allow() {
            log::warn!("vsock: event buffer too small for the transport reset event");
        }
        let _ = self.q.ev.add_used(&mem, head, written);
        self.ev_used = true;
        self.reset_pending = written == 0;
    }
}
