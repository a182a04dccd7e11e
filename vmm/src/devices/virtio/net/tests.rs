//! The device without KVM or a tap: a datagram socket pair stands in for the
//! tap (one frame per read or write, as a tap), guest memory and queues are
//! virtio-queue's mocks, and the backend is driven by hand.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Backend, BackendParts};
use super::*;
use crate::devices::virtio::persist::DeviceState;
use crate::devices::virtio::{
    Activation, F_EVENT_IDX, F_VERSION_1, Interrupt, TestRng, VirtioDevice, fuzz_iters,
};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const RXQ: u64 = 0;
const TXQ: u64 = 0x4000;
/// Guest buffers live from here on.
const BUFS: u64 = 0x10_0000;
const MEM: usize = 4 << 20;

struct Rig {
    mem: GuestMemoryMmap,
    backend: Backend,
    /// The host side of the stand-in tap.
    peer: UnixDatagram,
    qsize: u16,
}

fn socket_tap() -> (File, UnixDatagram) {
    let (dev, peer) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    (File::from(OwnedFd::from(dev)), peer)
}

fn mock(mem: &GuestMemoryMmap, base: u64, qsize: u16) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, GuestAddress(base), qsize)
}

fn rig_sized(acked: u64, qsize: u16) -> Rig {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let (tap, peer) = socket_tap();
    let rxq: Queue = mock(&mem, RXQ, qsize).create_queue().unwrap();
    let txq: Queue = mock(&mem, TXQ, qsize).create_queue().unwrap();
    let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let backend = Backend::new(BackendParts {
        mem: mem.clone(),
        rxq,
        txq,
        rx_evt: evt(),
        tx_evt: evt(),
        tap,
        interrupt: Interrupt::new(evt()),
        acked_features: acked,
    });
    Rig {
        mem,
        backend,
        peer,
        qsize,
    }
}

fn rig(acked: u64) -> Rig {
    rig_sized(acked, 16)
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Rig {
    /// Makes `chains` (each a list of (addr, len)) available on the queue
    /// at `base`, device-writable when `write`; descriptors from `first`.
    /// (Written by hand: a mock zeroes the rings whenever it is made.)
    fn offer(&self, base: u64, first: u16, chains: &[Vec<(u64, u32)>], write: bool) {
        let q = self.queue(base);
        let (table, avail) = (q.desc_table(), q.avail_ring());
        let mut i = first;
        for chain in chains {
            let head = i;
            for (k, &(addr, len)) in chain.iter().enumerate() {
                let last = k + 1 == chain.len();
                let flags = if write { WRITE } else { 0 } | if last { 0 } else { NEXT };
                let d = desc(addr, len, flags, i + 1);
                self.mem
                    .write_obj(d, GuestAddress(table + 16 * u64::from(i)))
                    .unwrap();
                i += 1;
            }
            let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
            let slot = avail + 4 + 2 * u64::from(idx % self.qsize);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.mem
                .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
                .unwrap();
        }
    }

    /// The used ring of the queue at `base`: (head, len) in order.
    fn used(&self, base: u64) -> Vec<(u32, u32)> {
        let used = self.used_addr(base);
        let n: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..n)
            .map(|i| {
                let at = used + 4 + 8 * u64::from(i % self.qsize);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    fn used_addr(&self, base: u64) -> u64 {
        self.queue(base).used_ring()
    }

    fn queue(&self, base: u64) -> &Queue {
        if base == RXQ {
            &self.backend.rxq
        } else {
            &self.backend.txq
        }
    }

    fn kick_tx(&mut self) {
        self.backend.tx_evt.write(1).unwrap();
        let fd = self.backend.tx_evt.as_raw_fd();
        self.backend.handle_fd(fd, EventSet::IN);
    }

    fn kick_rx(&mut self) {
        self.backend.rx_evt.write(1).unwrap();
        let fd = self.backend.rx_evt.as_raw_fd();
        self.backend.handle_fd(fd, EventSet::IN);
    }

    fn tap_ready(&mut self, events: EventSet) {
        let fd = self.backend.tap_fd();
        self.backend.handle_fd(fd, events);
    }

    /// Frames the device wrote to the tap.
    fn sent(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 17];
        while let Ok(n) = self.peer.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

fn header(h: VnetHeader) -> Vec<u8> {
    h.as_slice().to_vec()
}

/// A frame of `len` bytes with recognisable content.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn features_config_space_and_offloads() {
    let (tap, _peer) = socket_tap();
    let mac = [0x02, 0x68, 0x75, 0x6c, 0x6c, 0x01];
    let net = Net::new(Tap::stand_in(tap), Some(mac));
    let f = net.features();
    for want in [
        F_VERSION_1,
        F_EVENT_IDX,
        F_MAC,
        F_CSUM,
        F_GUEST_CSUM,
        F_HOST_TSO4,
        F_HOST_TSO6,
        F_GUEST_TSO4,
        F_GUEST_TSO6,
        F_MRG_RXBUF,
    ] {
        assert_ne!(f & want, 0, "feature {want:#x} not offered");
    }
    // The stand-in takes no TUNSETOFFLOAD, so no UFO is promised.
    assert_eq!(f & (F_GUEST_UFO | F_HOST_UFO), 0);
    let mut cfg = [0u8; 6];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, mac);
    let mut past = [0xffu8; 4];
    net.read_config(64, &mut past);
    assert_eq!(past, [0; 4]);

    let (tap, _peer) = socket_tap();
    let anon = Net::new(Tap::stand_in(tap), None);
    assert_eq!(anon.features() & F_MAC, 0, "MAC offered without one");

    use tap::{OFFLOAD_CSUM, OFFLOAD_TSO4, OFFLOAD_TSO6, OFFLOAD_UFO};
    assert_eq!(Net::offloads_for(0), 0);
    // Segments need checksum offload: without GUEST_CSUM nothing is on.
    assert_eq!(Net::offloads_for(F_GUEST_TSO4 | F_GUEST_TSO6), 0);
    assert_eq!(
        Net::offloads_for(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_UFO | F_HOST_TSO6),
        OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_UFO
    );
    assert_eq!(
        Net::offloads_for(F_GUEST_CSUM | F_GUEST_TSO6),
        OFFLOAD_CSUM | OFFLOAD_TSO6
    );
}

#[test]
fn taps_that_cannot_be_used_are_refused_in_one_line() {
    for bad in ["", "a/b", "a name", "sixteen-bytes-xx"] {
        let e = Tap::open(bad).unwrap_err();
        assert!(matches!(e, TapError::Name(_)), "{bad:?}: {e}");
    }
    assert!(matches!(Tap::from_fd(-1), Err(TapError::NotOpen(-1))));
    // An fd number nothing has open.
    assert!(matches!(Tap::from_fd(4000), Err(TapError::NotOpen(4000))));
    // An open fd that is no tap: refused, and left open for its owner.
    let null = File::open("/dev/null").unwrap();
    let e = Tap::from_fd(null.as_raw_fd()).unwrap_err();
    assert!(matches!(e, TapError::NotTap { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("fd {} is not a tap: ", null.as_raw_fd()))
    );
    assert!(std::error::Error::source(&e).is_none(), "cause shown twice");
    let mut byte = [0u8; 1];
    assert_eq!((&null).read(&mut byte).unwrap(), 0, "the fd was closed");
}

#[test]
fn tx_frame_and_its_header_reach_the_tap_as_the_guest_wrote_them() {
    let mut r = rig(F_VERSION_1 | F_CSUM | F_HOST_TSO4);
    // A TCP segment whose checksum the guest left to the host, to be cut
    // into 1448-byte segments: the header passes through untouched.
    let h = VnetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: HDR_GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let data = frame(9000, 3);
    r.mem.write_slice(&header(h), GuestAddress(BUFS)).unwrap();
    r.mem
        .write_slice(&data[..100], GuestAddress(BUFS + 0x1000))
        .unwrap();
    r.mem
        .write_slice(&data[100..], GuestAddress(BUFS + 0x2000))
        .unwrap();
    r.offer(
        TXQ,
        0,
        &[vec![
            (BUFS, HDR_LEN as u32),
            (BUFS + 0x1000, 100),
            (BUFS + 0x2000, 8900),
        ]],
        false,
    );
    r.kick_tx();
    let sent = r.sent();
    assert_eq!(sent.len(), 1);
    let mut want = header(h);
    want.extend_from_slice(&data);
    assert_eq!(sent[0], want, "the tap got something else");
    assert_eq!(r.used(TXQ), vec![(0, 0)]);
    let s = r.backend.stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 9000, 0));
}

#[test]
fn malformed_tx_chains_are_returned_unsent() {
    let mut r = rig(F_VERSION_1);
    let chains = vec![
        vec![(BUFS, 4)],                         // shorter than a header
        vec![(0xfff_0000, 64)],                  // outside guest memory
        vec![(BUFS, (MAX_TX_BYTES + 1) as u32)], // larger than any frame
        vec![(BUFS, 6), (MEM as u64 - 4, 64)],   // runs off the end of memory
    ];
    r.offer(TXQ, 0, &chains, false);
    // Only device-writable buffers: nothing to send.
    r.offer(TXQ, 5, &[vec![(BUFS, 64)]], true);
    // Then a good one, which still goes out.
    r.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(BUFS + 0x8000))
        .unwrap();
    r.mem
        .write_slice(&frame(60, 1), GuestAddress(BUFS + 0x8000 + HDR_LEN as u64))
        .unwrap();
    r.offer(
        TXQ,
        6,
        &[vec![(BUFS + 0x8000, (HDR_LEN + 60) as u32)]],
        false,
    );
    r.kick_tx();
    let sent = r.sent();
    assert_eq!(sent.len(), 1, "only the good frame goes out");
    assert_eq!(&sent[0][HDR_LEN..], &frame(60, 1)[..]);
    let used = r.used(TXQ);
    assert_eq!(used.len(), 6, "every chain comes back: {used:?}");
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert_eq!(r.backend.stats().tx_dropped, 5);
}

#[test]
fn a_tx_flood_is_served_in_bounded_batches() {
    let mut r = rig_sized(F_VERSION_1, 256);
    r.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(BUFS))
        .unwrap();
    let chains: Vec<Vec<(u64, u32)>> = (0..200).map(|_| vec![(BUFS, 64)]).collect();
    r.offer(TXQ, 0, &chains, false);
    r.kick_tx();
    assert_eq!(r.sent().len(), TX_BATCH, "one wake-up sends one batch");
    // The rest is left for the loop's next round: the kick was re-armed.
    assert_eq!(r.backend.tx_evt.read().unwrap(), 1, "tx not re-armed");
    r.kick_tx();
    assert_eq!(r.sent().len(), 200 - TX_BATCH);
    assert_eq!(r.used(TXQ).len(), 200);
}

#[test]
fn a_full_tap_holds_the_chain_until_it_has_room() {
    let mut r = rig(F_VERSION_1 | F_CSUM | F_HOST_TSO4);
    r.mem
        .write_slice(&[0u8; HDR_LEN], GuestAddress(BUFS))
        .unwrap();
    // 60 KiB frames: the socket's buffer takes only a few.
    let chains: Vec<Vec<(u64, u32)>> = (0..12).map(|_| vec![(BUFS, 60 << 10)]).collect();
    r.offer(TXQ, 0, &chains, false);
    r.kick_tx();
    let first = r.used(TXQ).len();
    assert!(first < 12, "the stand-in never filled up");
    assert!(r.backend.tap_interest.contains(EventSet::OUT));
    let mut got = r.sent().len();
    assert_eq!(got, first, "a chain returned used was not sent");
    // The tap drains; it is writable again.
    for _ in 0..12 {
        r.tap_ready(EventSet::OUT);
        got += r.sent().len();
    }
    assert_eq!(got, 12);
    assert_eq!(r.used(TXQ).len(), 12);
    assert_eq!(r.backend.stats().tx_dropped, 0);
}

/// Receives `f` (header and frame) through the stand-in tap.
fn deliver(r: &mut Rig, f: &[u8]) {
    r.peer.send(f).unwrap();
    r.tap_ready(EventSet::IN);
}

#[test]
fn rx_frame_spans_mergeable_buffers() {
    let mut r = rig(F_VERSION_1 | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4);
    // 16 buffers of 8 KiB: a 64 KiB segment needs 9 of them held.
    let chains: Vec<Vec<(u64, u32)>> = (0..16u64)
        .map(|i| vec![(BUFS + i * 0x2000, 0x2000)])
        .collect();
    r.offer(RXQ, 0, &chains, true);
    r.kick_rx();
    let h = VnetHeader {
        flags: HDR_F_NEEDS_CSUM,
        gso_type: HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let data = frame(20000, 9);
    let mut f = header(h);
    f.extend_from_slice(&data);
    deliver(&mut r, &f);
    let total = HDR_LEN + 20000;
    assert_eq!(
        r.used(RXQ),
        vec![(0, 0x2000), (1, 0x2000), (2, (total - 0x4000) as u32)]
    );
    let got_h: VnetHeader = r.mem.read_obj(GuestAddress(BUFS)).unwrap();
    assert_eq!(
        got_h,
        VnetHeader {
            num_buffers: 3,
            ..h
        }
    );
    let mut back = r.read(BUFS + HDR_LEN as u64, 0x2000 - HDR_LEN);
    back.extend(r.read(BUFS + 0x2000, 0x2000));
    back.extend(r.read(BUFS + 0x4000, total - 0x4000));
    assert_eq!(back, data);

    // A small frame takes the next buffer alone.
    let mut small = header(VnetHeader::default());
    small.extend_from_slice(&frame(60, 4));
    deliver(&mut r, &small);
    assert_eq!(r.used(RXQ)[3], (3, (HDR_LEN + 60) as u32));
    let h2: VnetHeader = r.mem.read_obj(GuestAddress(BUFS + 3 * 0x2000)).unwrap();
    assert_eq!(h2.num_buffers, 1);
    let s = r.backend.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (2, 20060, 0));
}

#[test]
fn rx_without_mergeable_buffers_uses_one_chain_per_frame() {
    let mut r = rig(F_VERSION_1);
    // Header and data in separate buffers, as older drivers do.
    r.offer(
        RXQ,
        0,
        &[
            vec![(BUFS, HDR_LEN as u32), (BUFS + 0x1000, 1518)],
            vec![(BUFS + 0x2000, HDR_LEN as u32), (BUFS + 0x3000, 1518)],
        ],
        true,
    );
    r.kick_rx();
    let mut f = header(VnetHeader::default());
    f.extend_from_slice(&frame(1000, 2));
    deliver(&mut r, &f);
    deliver(&mut r, &f);
    assert_eq!(
        r.used(RXQ),
        vec![(0, (HDR_LEN + 1000) as u32), (2, (HDR_LEN + 1000) as u32)]
    );
    let h: VnetHeader = r.mem.read_obj(GuestAddress(BUFS)).unwrap();
    assert_eq!(h.num_buffers, 1);
    assert_eq!(r.read(BUFS + 0x1000, 1000), frame(1000, 2));
}

#[test]
fn without_rx_buffers_the_tap_is_not_watched_until_the_guest_adds_some() {
    let mut r = rig(F_VERSION_1 | F_MRG_RXBUF);
    let mut f = header(VnetHeader::default());
    f.extend_from_slice(&frame(100, 5));
    deliver(&mut r, &f);
    // No buffers: reading would only drop the frame, and a readable tap
    // would wake the loop forever.
    assert!(!r.backend.tap_interest.contains(EventSet::IN));
    assert!(r.used(RXQ).is_empty());
    r.offer(
        RXQ,
        0,
        &[vec![(BUFS, 2048)], vec![(BUFS + 0x1000, 2048)]],
        true,
    );
    r.kick_rx();
    // One buffer took the frame; the other waits for the next.
    assert!(r.backend.tap_interest.contains(EventSet::IN));
    assert_eq!(r.used(RXQ), vec![(0, (HDR_LEN + 100) as u32)]);
    assert_eq!(r.read(BUFS + HDR_LEN as u64, 100), frame(100, 5));
}

#[test]
fn unusable_rx_chains_are_returned_empty() {
    let mut r = rig(F_VERSION_1 | F_MRG_RXBUF);
    r.offer(RXQ, 0, &[vec![(BUFS, 4)]], true); // no room for a header
    r.offer(RXQ, 1, &[vec![(0xfff_0000, 4096)]], true); // outside memory
    r.offer(RXQ, 2, &[vec![(BUFS, 4096)]], false); // device-readable only
    r.offer(RXQ, 3, &[vec![(BUFS + 0x1000, 4096)]], true); // fine
    r.kick_rx();
    let mut f = header(VnetHeader::default());
    f.extend_from_slice(&frame(64, 6));
    deliver(&mut r, &f);
    assert_eq!(
        r.used(RXQ),
        vec![(0, 0), (1, 0), (2, 0), (3, (HDR_LEN + 64) as u32)]
    );
}

/// Polls `cond` for up to 5 s.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("{what}");
}

/// A device on the event loop that received and sent frames, and holds an
/// rx buffer for the next one, is saved mid-stream; a fresh device on a new
/// tap, restored over the same guest memory, sends the frame the guest
/// queued while it was paused, and puts the next frame into the buffer the
/// old one held (given back to the guest's side by the save).
#[test]
fn a_restored_net_device_carries_on() {
    use crate::devices::virtio::event_loop::test_loop;
    use crate::devices::virtio::persist::{PersistError, queues_from};
    use crate::devices::virtio::test_queue::TestQueue;

    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let mut rx = TestQueue::new(&mem, 0);
    let mut tx = TestQueue::new(&mem, 0x4000);
    let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (rx_kick, tx_kick) = (evt(), evt());
    let activation = |queues: Vec<Queue>| Activation {
        mem: mem.clone(),
        queues,
        queue_evts: vec![rx_kick.try_clone().unwrap(), tx_kick.try_clone().unwrap()],
        interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        event_loop: test_loop(),
    };
    // Rx buffer n: 4 KiB at BUFS + n * 4 KiB, descriptor n.
    let rx_buf = |n: u16| BUFS + u64::from(n) * 0x1000;
    for n in 0..3 {
        rx.store(n, SplitDescriptor::new(rx_buf(n), 4096, WRITE, 0));
        rx.publish(n);
    }
    // Tx chain n: the header and a 100-byte frame at 0x20_0000 + n * 4 KiB.
    let send = |tx: &mut TestQueue, n: u16| {
        let at = 0x20_0000 + u64::from(n) * 0x1000;
        let mut f = header(VnetHeader::default());
        f.extend_from_slice(&frame(100, n as u8));
        mem.write_slice(&f, GuestAddress(at)).unwrap();
        tx.store(n, SplitDescriptor::new(at, f.len() as u32, 0, 0));
        tx.publish(n);
        tx_kick.write(1).unwrap();
        f
    };
    let from_host = |seed: u8| {
        let mut f = header(VnetHeader::default());
        f.extend_from_slice(&frame(200, seed));
        f
    };
    let recv = |peer: &UnixDatagram| {
        let mut buf = vec![0u8; 4096];
        let mut got = None;
        wait_for("no frame reached the tap", || {
            got = peer.recv(&mut buf).ok();
            got.is_some()
        });
        buf.truncate(got.unwrap());
        buf
    };

    let (tap, peer) = socket_tap();
    let mac = [2, 0, 0, 0, 0, 7];
    let acked = F_VERSION_1 | F_MRG_RXBUF | F_MAC | F_EVENT_IDX;
    let mut net = Net::new(Tap::stand_in(tap), Some(mac));
    net.activate(activation(vec![rx.queue(), tx.queue()]), acked)
        .unwrap();
    rx_kick.write(1).unwrap();
    let sent = send(&mut tx, 0);
    assert_eq!(recv(&peer), sent);
    let a = from_host(1);
    peer.send(&a).unwrap();
    wait_for("frame A never reached the guest", || rx.used_idx() == 1);
    assert_eq!(rx.take_used(), vec![(0, a.len() as u32)]);
    // The device holds buffer 1 for the next frame.
    wait_for("the device took no buffer for the next frame", || {
        net.stats().rx_frames == 1
    });

    let state = net.save();
    let json = serde_json::to_string(&state).unwrap();
    // Paused: neither a queued tx chain nor a frame from the tap moves.
    let waiting = send(&mut tx, 1);
    peer.send(&from_host(2)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(tx.used_idx(), 1, "a paused device sent a frame");
    assert_eq!(rx.used_idx(), 1, "a paused device received a frame");
    assert!(peer.recv(&mut [0u8; 16]).is_err());
    drop(net);

    let state: DeviceState = serde_json::from_str(&json).unwrap();
    let DeviceState::Net(s) = &state else {
        panic!("a net device saved as {}", state.kind());
    };
    assert_eq!((s.mac, s.virtio.acked_features), (Some(mac), acked));
    assert_eq!(
        (s.virtio.queues[0].next_avail, s.virtio.queues[0].next_used),
        (1, 1),
        "the held rx buffer was saved as taken"
    );
    assert_eq!(s.virtio.queues[1].next_avail, 1);

    // Another MAC is not this device; a future format is refused.
    let (tap3, _peer3) = socket_tap();
    let mut other = Net::new(Tap::stand_in(tap3), Some([2, 0, 0, 0, 0, 8]));
    assert!(matches!(
        other.restore(&state, None),
        Err(PersistError::Mismatch(_))
    ));
    let mut future = state.clone();
    if let DeviceState::Net(s) = &mut future {
        s.virtio.version += 1;
    }
    assert!(matches!(
        other.restore(&future, None),
        Err(PersistError::Version { .. })
    ));

    let (tap2, peer2) = socket_tap();
    let mut net = Net::new(Tap::stand_in(tap2), Some(mac));
    let queues = queues_from(&state.virtio().queues).unwrap();
    net.restore(&state, Some(activation(queues))).unwrap();
    assert_eq!(recv(&peer2), waiting, "the chain queued while paused");
    wait_for("the waiting tx chain was not returned", || {
        tx.used_idx() == 2
    });
    // Frame B went to the old tap; C goes into the buffer the old device held.
    let c = from_host(3);
    peer2.send(&c).unwrap();
    wait_for("frame C never reached the guest", || rx.used_idx() == 2);
    assert_eq!(rx.take_used(), vec![(1, c.len() as u32)]);
    let mut got = vec![0u8; c.len()];
    mem.read_slice(&mut got, GuestAddress(rx_buf(1))).unwrap();
    assert_eq!(got[HDR_LEN..], c[HDR_LEN..]);
    assert_eq!(got[NUM_BUFFERS_OFFSET], 1, "num_buffers");

    // Paused and resumed in place: what waited is served on resume.
    net.pause();
    let d = from_host(4);
    peer2.send(&d).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(rx.used_idx(), 2, "a paused device received a frame");
    net.resume().unwrap();
    wait_for("frame D never reached the guest", || rx.used_idx() == 3);
    assert_eq!(rx.take_used(), vec![(2, d.len() as u32)]);

    net.reset();
    let DeviceState::Net(s) = net.save() else {
        panic!("not a net state");
    };
    assert!(s.virtio.queues.is_empty());
}

/// Random rx buffers and frames: a frame the guest sees is exactly the frame
/// the tap gave (its bytes in order across the buffers, `num_buffers` their
/// count), never more bytes than a buffer holds; a frame that cannot fit is
/// dropped, never cut.
#[test]
fn random_rx_buffers_get_whole_frames() {
    let mut rng = TestRng(0x5eed_0123_4567_89ab);
    for _ in 0..fuzz_iters() / 200 {
        let mergeable = rng.next().is_multiple_of(2);
        let acked = F_VERSION_1 | if mergeable { F_MRG_RXBUF } else { 0 };
        let mut r = rig(acked);
        // Buffers of 1..3 pieces, 12 to 3000 bytes each, laid out apart.
        let mut chains = Vec::new();
        let mut caps = Vec::new();
        for c in 0..8u64 {
            let pieces = 1 + rng.next() % 3;
            let chain: Vec<(u64, u32)> = (0..pieces)
                .map(|p| {
                    (
                        BUFS + c * 0x4000 + p * 0x1000,
                        12 + (rng.next() % 3000) as u32,
                    )
                })
                .collect();
            caps.push(chain.iter().map(|&(_, l)| l as usize).sum::<usize>());
            chains.push(chain);
        }
        // Descriptors are numbered in order: each chain's head follows the
        // previous chain's buffers.
        let heads: Vec<u32> = chains
            .iter()
            .scan(0u32, |at, ch| {
                let h = *at;
                *at += ch.len() as u32;
                Some(h)
            })
            .collect();
        r.offer(RXQ, 0, &chains, true);
        r.kick_rx();
        let len = HDR_LEN + (rng.next() % 2000) as usize;
        let mut f = header(VnetHeader::default());
        f.extend_from_slice(&frame(len - HDR_LEN, rng.next() as u8));
        deliver(&mut r, &f);
        let used = r.used(RXQ);
        if used.is_empty() {
            // Dropped (too large for what is held) or not read yet.
            continue;
        }
        let mut got = Vec::new();
        for &(head, n) in &used {
            let ci = heads
                .iter()
                .position(|&h| h == head)
                .expect("a head the guest gave");
            assert!(n as usize <= caps[ci], "used {n} > buffer {}", caps[ci]);
            let mut left = n as usize;
            for &(addr, l) in &chains[ci] {
                let take = left.min(l as usize);
                got.extend(r.read(addr, take));
                left -= take;
            }
        }
        assert!(mergeable || used.len() == 1);
        assert_eq!(got.len(), len, "frame length");
        let nb = u16::from_le_bytes([got[NUM_BUFFERS_OFFSET], got[NUM_BUFFERS_OFFSET + 1]]);
        assert_eq!(usize::from(nb), used.len());
        assert_eq!(got[HDR_LEN..], f[HDR_LEN..], "frame bytes");
    }
}
