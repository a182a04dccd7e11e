//! The active device on the event loop: the two queues, their kick
//! eventfds and the tap. A kick of the tx queue sends; a readable tap or a
//! kick of the rx queue (fresh buffers) receives; each does a bounded batch
//! and leaves the rest for the next round of the loop.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::counts::Meter;
use super::rx::RxBuffers;
use super::{F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_UFO, F_MRG_RXBUF, HDR_LEN, NetStats};
use super::{MAX_GSO_FRAME, MAX_PLAIN_FRAME};
use crate::devices::virtio::event_loop::{EventLoop, EventOps};
use crate::devices::virtio::{F_EVENT_IDX, Interrupt, LogLimit};

/// What the backend is made of at activation.
pub(crate) struct BackendParts {
    pub mem: GuestMemoryMmap,
    pub rxq: Queue,
    pub txq: Queue,
    pub rx_evt: EventFd,
    pub tx_evt: EventFd,
    /// The tap (or, in tests and the fuzz target, a datagram socket).
    pub tap: File,
    pub interrupt: Interrupt,
    pub acked_features: u64,
}

pub(crate) struct Backend {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rxq: Queue,
    pub(super) txq: Queue,
    pub(super) rx_evt: EventFd,
    pub(super) tx_evt: EventFd,
    pub(super) tap: File,
    interrupt: Interrupt,
    /// The event loop and the tap's token there (None when driven by hand).
    pub(super) tap_watch: Option<(EventLoop, u64)>,
    /// What the tap is watched for: IN while the guest has rx buffers,
    /// OUT while a transmit waits for room.
    pub(super) tap_interest: EventSet,
    /// Rx buffers taken from the queue, not yet filled.
    pub(super) rx: RxBuffers,
    /// Frames may span several rx buffers (VIRTIO_NET_F_MRG_RXBUF).
    pub(super) mergeable: bool,
    /// Bytes the rx buffers must hold before a frame is read: the largest
    /// frame the tap can hand over, with its header.
    pub(super) rx_frame_bytes: usize,
    pub(super) rx_used: bool,
    pub(super) tx_used: bool,
    pub(super) stats: NetStats,
    pub(super) errors: LogLimit,
    /// Work per interrupt and kick, logged at debug level.
    pub(super) meter: Meter,
}

impl Backend {
    pub(crate) fn new(p: BackendParts) -> Backend {
        let event_idx = p.acked_features & F_EVENT_IDX != 0;
        let (mut rxq, mut txq) = (p.rxq, p.txq);
        rxq.set_event_idx(event_idx);
        txq.set_event_idx(event_idx);
        let gso = p.acked_features & (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO) != 0;
        Backend {
            mem: p.mem,
            rxq,
            txq,
            rx_evt: p.rx_evt,
            tx_evt: p.tx_evt,
            tap: p.tap,
            interrupt: p.interrupt,
            tap_watch: None,
            tap_interest: EventSet::IN,
            rx: RxBuffers::default(),
            mergeable: p.acked_features & F_MRG_RXBUF != 0,
            rx_frame_bytes: HDR_LEN + if gso { MAX_GSO_FRAME } else { MAX_PLAIN_FRAME },
            rx_used: false,
            tx_used: false,
            stats: NetStats::default(),
            errors: LogLimit::default(),
            meter: Meter::default(),
        }
    }

    /// Serves what is waiting right after activation: chains the driver
    /// queued before, frames already in the tap.
    pub(crate) fn start(&mut self) {
        self.process_tx();
        self.process_rx();
        self.notify();
    }

    pub(super) fn tap_fd(&self) -> RawFd {
        self.tap.as_raw_fd()
    }

    /// Watches the tap for `want` (no-op when unchanged).
    pub(super) fn set_tap_interest(&mut self, want: EventSet) {
        if want == self.tap_interest {
            return;
        }
        self.tap_interest = want;
        self.apply_tap_interest();
    }

    /// Starts watching the tap on `el` under `token` (added there watched
    /// for nothing) for what the backend waits on. Before, an event handled
    /// between adding the tap and this could change the interest without
    /// the loop knowing, and a tap watched for IN with no rx buffers to read
    /// into woke the loop over and over until the guest's first rx kick.
    pub(crate) fn watch_tap(&mut self, el: EventLoop, token: u64) {
        self.tap_watch = Some((el, token));
        self.apply_tap_interest();
    }

    fn apply_tap_interest(&mut self) {
        let want = self.tap_interest;
        if let Some((el, token)) = &self.tap_watch {
            if let Err(e) = el.modify(*token, want) {
                if self.errors.allow() {
                    log::warn!("virtio-net: watching the tap: {e}");
                }
            }
        }
    }

    /// Interrupts the guest if it wants to hear about the buffers returned.
    fn notify(&mut self) {
        let mem = &self.mem;
        let rx =
            std::mem::take(&mut self.rx_used) && self.rxq.needs_notification(mem).unwrap_or(true);
        let tx =
            std::mem::take(&mut self.tx_used) && self.txq.needs_notification(mem).unwrap_or(true);
        if rx || tx {
            self.interrupt.signal_used();
            if rx {
                self.meter.c.rx_irqs += 1;
            } else {
                self.meter.c.tx_irqs += 1;
            }
        }
    }

    /// What the device has counted.
    pub(crate) fn stats(&self) -> NetStats {
        self.stats
    }

    /// The queues as a snapshot keeps them: rx buffers taken but not filled
    /// go back to the guest's side of the ring.
    pub(crate) fn queue_states(&self) -> [virtio_queue::QueueState; 2] {
        let mut rx = self.rxq.state();
        rx.next_avail = rx.next_avail.wrapping_sub(self.rx.chains() as u16);
        [rx, self.txq.state()]
    }

    /// Handles readiness of one of the backend's fds (the event loop's
    /// entry, also called by hand by tests and the fuzz target).
    pub(crate) fn handle_fd(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.rx_evt.as_raw_fd() {
            let _ = self.rx_evt.read();
            self.meter.c.rx_kicks += 1;
            // Fresh rx buffers: the tap is worth reading again.
            self.set_tap_interest(self.tap_interest | EventSet::IN);
            self.process_rx();
        } else if fd == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
            self.meter.c.tx_kicks += 1;
            self.process_tx();
        } else if fd == self.tap_fd() {
            if events.contains(EventSet::OUT) {
                self.set_tap_interest(self.tap_interest - EventSet::OUT);
                self.process_tx();
            }
            if events.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                self.process_rx();
            }
        }
        self.notify();
        self.meter.tick();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let over = self.meter.elapsed();
        self.meter.flush(over);
    }
}

impl crate::devices::virtio::event_loop::EventHandler for Backend {
    fn handle(&mut self, _ops: &mut EventOps, fd: RawFd, events: EventSet) {
        self.handle_fd(fd, events);
    }
}
