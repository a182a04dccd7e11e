//! Transmitting: each tx chain (header, then the frame) goes to the tap
//! with one writev straight from guest memory. The chain is untrusted: it
//! must lie in guest memory, hold at least a header and at most the largest
//! frame, in at most [`MAX_FRAME_SEGS`] buffers; anything else is returned
//! unsent. The header goes to the tap as it is: the host stack finishes a
//! checksum the guest left (NEEDS_CSUM) and segments a large frame, and
//! refuses a header that does not fit its frame.

use virtio_queue::QueueT;
use vm_memory::Permissions;
use vmm_sys_util::epoll::EventSet;

use super::backend::Backend;
use super::{HDR_LEN, MAX_FRAME_SEGS, MAX_TX_BYTES, TX_BATCH};
use crate::devices::virtio::Rounds;
use crate::devices::virtio::iov::{GuestIovecs, segments};
use crate::devices::virtio::queue_worker::Chain;

/// What became of one tx chain.
enum Sent {
    /// Written to the tap, or dropped: either way it goes back used.
    Done,
    /// The tap has no room now: the chain goes back to the ring, to be
    /// sent when the tap is writable.
    Later,
}

impl Backend {
    /// Sends what the guest queued: at most [`TX_BATCH`] chains now. With
    /// more waiting, the tx eventfd is kicked again, so the event loop
    /// serves the other devices first and then comes back here.
    pub(super) fn process_tx(&mut self) {
        if self.tap_interest.contains(EventSet::OUT) {
            return; // waiting for the tap to take the last chain
        }
        let mem = self.mem.clone();
        let mut rounds = Rounds::default();
        let mut budget = TX_BATCH;
        loop {
            let mut popped = false;
            while let Some(chain) = self.txq.pop_descriptor_chain(&mem) {
                popped = true;
                let head = chain.head_index();
                match self.send(chain) {
                    Sent::Done => {
                        if let Err(e) = self.txq.add_used(&mem, head, 0) {
                            if self.errors.allow() {
                                log::warn!("virtio-net: returning a tx buffer: {e}");
                            }
                        }
                        self.tx_used = true;
                        self.meter.c.tx_chains += 1;
                    }
                    Sent::Later => {
                        let back = self.txq.next_avail().wrapping_sub(1);
                        self.txq.set_next_avail(back);
                        self.set_tap_interest(self.tap_interest | EventSet::OUT);
                        return;
                    }
                }
                budget -= 1;
                if budget == 0 {
                    if let Err(e) = self.tx_evt.write(1) {
                        if self.errors.allow() {
                            log::warn!("virtio-net: re-arming tx: {e}");
                        }
                    }
                    return;
                }
            }
            if !rounds.again(&mut self.txq, &mem, popped, &mut self.errors) {
                return;
            }
        }
    }

    /// Writes one chain's frame to the tap.
    fn send(&mut self, chain: Chain<'_>) -> Sent {
        let whole = chain.clone();
        let readable = chain.reader(&self.mem).map(|r| r.available_bytes());
        let len = match readable {
            Ok(n) => n,
            Err(e) => return self.drop_tx(format_args!("malformed chain: {e}")),
        };
        if !(HDR_LEN..=MAX_TX_BYTES).contains(&len) {
            return self.drop_tx(format_args!("{len} bytes, not {HDR_LEN} to {MAX_TX_BYTES}"));
        }
        let segs = segments(&whole, false, 0, len);
        if segs.len() > MAX_FRAME_SEGS {
            return self.drop_tx(format_args!("{} buffers", segs.len()));
        }
        let iovs = match GuestIovecs::new(&self.mem, &segs, Permissions::Read) {
            Ok(iovs) if iovs.len() <= 1024 => iovs,
            _ => return self.drop_tx(format_args!("buffers outside guest memory")),
        };
        let fd = self.tap_fd();
        // SAFETY: the iovecs point into guest memory that `iovs` keeps
        // mapped, with lengths vm-memory checked; the tap fd is ours.
        let wrote = iovs.call(0, |ptr, count| unsafe { libc::writev(fd, ptr, count) });
        match wrote {
            Ok(_) => {
                self.stats.tx_frames += 1;
                self.stats.tx_bytes += (len - HDR_LEN) as u64;
                Sent::Done
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::Later,
            // The tap refuses a frame whose header does not fit it.
            Err(e) => self.drop_tx(format_args!("the tap refused it: {e}")),
        }
    }

    fn drop_tx(&mut self, why: std::fmt::Arguments<'_>) -> Sent {
        self.stats.tx_dropped += 1;
        if self.errors.allow() {
            log::warn!("virtio-net: tx frame dropped ({why})");
        }
        Sent::Done
    }
}
