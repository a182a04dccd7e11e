//! Receiving: frames from the tap into the guest's rx buffers.
//!
//! The tap hands over one frame per read and drops what does not fit, so
//! buffers for the largest frame it can give are collected first (one chain
//! without mergeable buffers; with them, as many chains as it takes). The
//! frame is then read straight into them with one readv. With mergeable
//! buffers the chains it filled go back used, `num_buffers` in the header
//! saying how many; the others wait for the next frame.

use std::collections::VecDeque;

use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, Permissions};
use vmm_sys_util::epoll::EventSet;

use super::backend::Backend;
use super::{HDR_LEN, MAX_FRAME_SEGS, NUM_BUFFERS_OFFSET, RX_BATCH};
use crate::devices::virtio::iov::{GuestIovecs, segments};

/// An rx chain taken from the queue: its head and its writable buffers.
pub(super) struct RxChain {
    head: u16,
    segs: Vec<(GuestAddress, usize)>,
    bytes: usize,
}

/// The rx chains held for the next frame, in queue order.
#[derive(Default)]
pub(super) struct RxBuffers {
    chains: VecDeque<RxChain>,
    bytes: usize,
    segs: usize,
}

impl RxBuffers {
    pub(super) fn chains(&self) -> usize {
        self.chains.len()
    }

    /// Whether a frame of up to `frame_bytes` can be read now: the buffers
    /// hold it, or they are all a readv takes, or all the ring can offer.
    fn ready(&self, frame_bytes: usize, mergeable: bool, ring_size: u16) -> bool {
        match self.chains.front() {
            None => false,
            Some(_) if !mergeable => true,
            Some(_) => {
                self.bytes >= frame_bytes
                    || self.segs >= MAX_FRAME_SEGS
                    || self.chains.len() >= usize::from(ring_size)
            }
        }
    }

    fn push(&mut self, c: RxChain) {
        self.bytes += c.bytes;
        self.segs += c.segs.len();
        self.chains.push_back(c);
    }

    fn pop(&mut self) -> Option<RxChain> {
        let c = self.chains.pop_front()?;
        self.bytes -= c.bytes;
        self.segs -= c.segs.len();
        Some(c)
    }

    /// The buffers a frame may fill: all of them, or the first chain's.
    fn frame_segs(&self, mergeable: bool) -> Vec<(GuestAddress, usize)> {
        let n = if mergeable { self.chains.len() } else { 1 };
        self.chains
            .iter()
            .take(n)
            .flat_map(|c| c.segs.iter().copied())
            .collect()
    }

    fn frame_bytes(&self, mergeable: bool) -> usize {
        if mergeable {
            self.bytes
        } else {
            self.chains.front().map_or(0, |c| c.bytes)
        }
    }
}

/// What one read of the tap did.
enum Read {
    /// A frame went to the guest.
    Delivered,
    /// A frame was dropped (too large for the buffers, or malformed).
    Dropped,
    /// The tap has nothing more.
    Empty,
}

impl Backend {
    /// Moves frames from the tap to the guest: at most [`RX_BATCH`] now;
    /// the tap stays readable for the event loop's next round. Without
    /// buffers the tap is no longer watched until the guest adds some.
    pub(super) fn process_rx(&mut self) {
        for _ in 0..RX_BATCH {
            if !self.take_rx_buffers() {
                self.set_tap_interest(self.tap_interest - EventSet::IN);
                return;
            }
            match self.read_frame() {
                Read::Delivered | Read::Dropped => {}
                Read::Empty => return,
            }
        }
    }

    /// Takes chains from the rx queue until a frame of the largest size
    /// fits; false when the guest has not given enough (its next kick of
    /// the rx queue brings more).
    fn take_rx_buffers(&mut self) -> bool {
        let mem = self.mem.clone();
        let mut idle_rounds = 0;
        while !self
            .rx
            .ready(self.rx_frame_bytes, self.mergeable, self.rxq.size())
        {
            let Some(chain) = self.rxq.pop_descriptor_chain(&mem) else {
                // Ask for a kick, then look once more: buffers added meanwhile
                // raised none. An available index past the queue (a broken
                // guest) yields nothing however often it is asked.
                idle_rounds += 1;
                match self.rxq.enable_notification(&mem) {
                    Ok(true) if idle_rounds < 2 => continue,
                    _ => {
                        self.meter.c.rx_waits += 1;
                        return false;
                    }
                }
            };
            idle_rounds = 0;
            let head = chain.head_index();
            let bytes = match chain.clone().writer(&mem) {
                Ok(w) => w.available_bytes(),
                Err(e) => {
                    self.bad_rx_chain(head, format_args!("malformed: {e}"));
                    continue;
                }
            };
            let segs = segments(&chain, true, 0, bytes);
            if bytes < HDR_LEN || segs.len() > MAX_FRAME_SEGS {
                self.bad_rx_chain(
                    head,
                    format_args!("{bytes} bytes in {} buffers", segs.len()),
                );
                continue;
            }
            self.rx.push(RxChain { head, segs, bytes });
        }
        true
    }

    /// Returns an unusable rx chain empty.
    fn bad_rx_chain(&mut self, head: u16, why: std::fmt::Arguments<'_>) {
        if self.errors.allow() {
            log::warn!("virtio-net: rx chain {head} unusable ({why}); returned empty");
        }
        let _ = self.rxq.add_used(&self.mem, head, 0);
        self.rx_used = true;
    }

    /// Reads one frame from the tap into the held buffers.
    fn read_frame(&mut self) -> Read {
        let segs = self.rx.frame_segs(self.mergeable);
        let room = self.rx.frame_bytes(self.mergeable);
        let iovs = match GuestIovecs::new(&self.mem, &segs, Permissions::Write) {
            Ok(iovs) if iovs.len() < 1024 => iovs,
            _ => {
                // Buffers that passed their check at pop time but cannot be
                // mapped now: give them all back empty.
                while let Some(c) = self.rx.pop() {
                    self.bad_rx_chain(c.head, format_args!("not in guest memory"));
                }
                return Read::Dropped;
            }
        };
        let fd = self.tap_fd();
        // One byte past the guest's buffers: a frame that reaches it did not
        // fit (a tap reports a frame's whole length anyway; a socket standing
        // in for it, in tests, reports what it copied).
        let mut spill = 0u8;
        let spill_at: *mut u8 = &raw mut spill;
        let got = iovs.call(0, |ptr, count| {
            // SAFETY: `ptr` and `count` describe the iovecs `iovs` holds.
            let mut v = unsafe { std::slice::from_raw_parts(ptr, count as usize) }.to_vec();
            v.push(libc::iovec {
                iov_base: spill_at.cast(),
                iov_len: 1,
            });
            // SAFETY: the guest's iovecs point into memory that `iovs` keeps
            // mapped, with lengths vm-memory checked; the last one is
            // `spill`, alive across the call; the tap fd is ours.
            unsafe { libc::readv(fd, v.as_ptr(), v.len() as libc::c_int) }
        });
        drop(iovs);
        self.meter.c.tap_reads += 1;
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Read::Empty,
            Err(e) => {
                if self.errors.allow() {
                    log::warn!("virtio-net: reading the tap: {e}");
                }
                return Read::Empty;
            }
        };
        if n < HDR_LEN || n > room {
            // The buffers hold a cut frame: keep them for the next one.
            self.stats.rx_dropped += 1;
            if self.errors.allow() {
                log::warn!(
                    "virtio-net: dropped a {n}-byte frame; the guest's rx buffers hold {room}"
                );
            }
            return Read::Dropped;
        }
        self.deliver(n);
        Read::Delivered
    }

    /// Returns the chains a frame of `n` bytes filled, in order; the first
    /// one's header says how many there are.
    fn deliver(&mut self, n: usize) {
        let mem = self.mem.clone();
        let mut left = n;
        let mut filled: Vec<(u16, usize)> = Vec::new();
        let mut first: Option<Vec<(GuestAddress, usize)>> = None;
        while left > 0 {
            let Some(c) = self.rx.pop() else { break };
            let len = c.bytes.min(left);
            left -= len;
            filled.push((c.head, len));
            if first.is_none() {
                first = Some(c.segs);
            }
            if !self.mergeable {
                break;
            }
        }
        let count = filled.len() as u16;
        let count_used = filled.len() as u64;
        if let Some(segs) = first {
            write_at(&mem, &segs, NUM_BUFFERS_OFFSET, &count.to_le_bytes());
        }
        for (head, len) in filled {
            if let Err(e) = self.rxq.add_used(&mem, head, len as u32) {
                if self.errors.allow() {
                    log::warn!("virtio-net: returning an rx buffer: {e}");
                }
            }
        }
        self.rx_used = true;
        self.meter.c.rx_used += count_used;
        self.meter.c.rx_frames += 1;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += (n - HDR_LEN) as u64;
    }
}

/// Writes `bytes` at byte `offset` of the buffers `segs` (which hold it:
/// the header is in the first chain, which has at least its length).
fn write_at(
    mem: &vm_memory::GuestMemoryMmap,
    segs: &[(GuestAddress, usize)],
    mut offset: usize,
    bytes: &[u8],
) {
    let mut rest = bytes;
    for &(addr, len) in segs {
        if rest.is_empty() {
            return;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(rest.len());
        let _ = mem.write_slice(&rest[..n], addr.unchecked_add(offset as u64));
        rest = &rest[n..];
        offset = 0;
    }
}
