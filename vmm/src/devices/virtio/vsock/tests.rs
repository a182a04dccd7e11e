//! The vsock device driven through its queues in guest memory, on a real
//! event loop, against real Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use virtio_queue::Queue;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::event_loop::test_loop;
use super::super::test_queue::TestQueue;
use super::super::{Activation, F_VERSION_1, Interrupt, TestRng, VirtioDevice, fuzz_iters};
use super::Vsock;
use super::packet::{HDR_LEN, Header, TYPE_STREAM};

use super::super::test_queue::QUEUE_SIZE;

const RX_BUF: u32 = 4096;

/// Random packets from the guest (any op, lengths that lie, chains that
/// point outside memory, unknown CIDs, ports and types) and random bytes
/// from host clients instead of `CONNECT <port>`: the device keeps
/// serving both queues, and every packet it gives the guest fits the
/// buffer it was given. `HULL_FUZZ_ITERS` sets the number of packets.
#[test]
fn random_packets_and_host_lines_are_survived() {
    let iters = fuzz_iters();
    let dir = std::env::temp_dir().join(format!("hull-vsock-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    // Guest connections to host port 7 land here; take and drain them.
    let host7 = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
    std::thread::spawn(move || {
        for c in host7.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &c, &mut std::io::sink());
            });
        }
    });
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    let mut rx = TestQueue::new(&mem, 0);
    let mut tx = TestQueue::new(&mem, 0x10000);
    let ev = TestQueue::new(&mem, 0x20000);
    let event_loop = test_loop();
    let mut dev = Vsock::new(3, &uds).unwrap();
    let evts: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let rx_kick = evts[0].try_clone().unwrap();
    let tx_kick = evts[1].try_clone().unwrap();
    let queues = vec![rx.queue(), tx.queue(), ev.queue()];
    dev.activate(
        Activation {
            mem: mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            event_loop: event_loop.clone(),
        },
        F_VERSION_1,
    )
    .unwrap();
    // Rx buffers: descriptor i is 4 KiB at 0x100000 + i * 4 KiB.
    for i in 0..QUEUE_SIZE {
        let d = SplitDescriptor::new(0x10_0000 + u64::from(i) * 4096, RX_BUF, 2, 0);
        rx.store(i, d);
        rx.publish(i);
    }
    rx_kick.write(1).unwrap();

    // Host clients writing random lines, some of them valid.
    let uds2 = uds.clone();
    let clients = std::thread::spawn(move || {
        let mut rng = TestRng(0xfeed_beef);
        for _ in 0..200 {
            let Ok(mut c) = UnixStream::connect(&uds2) else {
                continue;
            };
            let line: Vec<u8> = match rng.next() % 4 {
                0 => format!("CONNECT {}\n", rng.next() % 2000).into_bytes(),
                1 => b"CONNECT 99999999999999999999\n".to_vec(),
                2 => (0..rng.next() % 300).map(|_| rng.next() as u8).collect(),
                _ => vec![b'A'; 5000],
            };
            let _ = c.write_all(&line);
        }
    });

    let mut rng = TestRng(0x0123_4567_89ab_cdef);
    let batch = u64::from(QUEUE_SIZE / 4);
    let mut sent = 0u64;
    while sent < iters {
        let n = batch.min(iters - sent);
        for k in 0..n {
            let slot = k as u16; // descriptors 2*slot and 2*slot + 1
            let at = 0x20_0000 + u64::from(slot) * 0x1_2000;
            let r = rng.next() as u32;
            let len = rng.pick(&[0u32, 10, 4096, 65536, 65537, r]);
            let h = Header {
                src_cid: rng.pick(&[3, 3, 3, 2, u64::MAX]),
                dst_cid: rng.pick(&[2, 2, 3, 0]),
                src_port: rng.pick(&[1000, 1001, 1002, u32::MAX]),
                dst_port: rng.pick(&[7, 7, 9, 1234]),
                len,
                kind: rng.pick(&[TYPE_STREAM, TYPE_STREAM, 2]),
                op: (rng.next() % 9) as u16,
                flags: (rng.next() % 4) as u32,
                buf_alloc: rng.pick(&[0, 4096, 262_144, u32::MAX]),
                fwd_cnt: rng.next() as u32,
            };
            mem.write_obj(h, GuestAddress(at)).unwrap();
            let payload_len = rng.pick(&[0u32, len.min(0x1_0000), 5]);
            let hdr_addr = rng.pick(&[at, at, at, 0x7f_fff0, 0x100_0000]);
            let hdr_len = rng.pick(&[HDR_LEN as u32, HDR_LEN as u32, 10, 0]);
            let two = payload_len > 0;
            let d0 = SplitDescriptor::new(hdr_addr, hdr_len, if two { 1 } else { 0 }, 2 * slot + 1);
            tx.store(2 * slot, d0);
            if two {
                let d1 = SplitDescriptor::new(at + 64, payload_len, 0, 0);
                tx.store(2 * slot + 1, d1);
            }
            tx.publish(2 * slot);
        }
        tx_kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while tx.used_idx() != tx.avail {
            assert!(
                std::time::Instant::now() < deadline,
                "the device stopped serving tx after {sent} packets (used {} of {}; rx used {} of {})",
                tx.used_idx(),
                tx.avail,
                rx.used_idx(),
                rx.avail
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        tx.take_used();
        // Give back the rx buffers the device filled, checking them.
        for (id, len) in rx.take_used() {
            assert!(id < QUEUE_SIZE, "used id {id}");
            assert!(
                len <= RX_BUF,
                "the device wrote {len} bytes into a {RX_BUF}-byte buffer"
            );
            rx.publish(id);
        }
        rx_kick.write(1).unwrap();
        sent += n;
    }
    clients.join().unwrap();
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A guest's view of one vsock device: its three queues in 8 MiB of guest
/// memory, the eventfds it kicks them with, and the interrupt it gets.
struct Rig {
    mem: GuestMemoryMmap,
    rx: TestQueue,
    tx: TestQueue,
    ev: TestQueue,
    kicks: [EventFd; 3],
    irq: EventFd,
    /// Rx descriptors published so far (descriptor i: 4 KiB at 1 MiB + i * 4 KiB).
    rx_published: u16,
    /// Tx descriptors used so far (descriptor i: a packet at 2 MiB + i * 4 KiB).
    tx_published: u16,
}

const GUEST_CID: u64 = 3;

impl Rig {
    fn new() -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Rig {
            rx: TestQueue::new(&mem, 0),
            tx: TestQueue::new(&mem, 0x10000),
            ev: TestQueue::new(&mem, 0x20000),
            mem,
            kicks: [evt(), evt(), evt()],
            irq: evt(),
            rx_published: 0,
            tx_published: 0,
        }
    }

    /// What the transport gives the device, over the rig's memory; the
    /// queues as the driver set them up, or as `queues` says.
    fn activation(&self, queues: Option<Vec<Queue>>) -> Activation {
        let queues =
            queues.unwrap_or_else(|| vec![self.rx.queue(), self.tx.queue(), self.ev.queue()]);
        Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts: self.kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: Interrupt::new(self.irq.try_clone().unwrap()),
            event_loop: test_loop(),
        }
    }

    fn give_rx(&mut self, n: u16, len: u32) {
        for _ in 0..n {
            let i = self.rx_published;
            let d = SplitDescriptor::new(0x10_0000 + u64::from(i) * 4096, len, 2, 0);
            self.rx.store(i, d);
            self.rx.publish(i);
            self.rx_published += 1;
        }
        self.kicks[0].write(1).unwrap();
    }

    fn send(&mut self, op: u16, src_port: u32, dst_port: u32) {
        let i = self.tx_published;
        let at = 0x20_0000 + u64::from(i) * 4096;
        let h = Header {
            src_cid: GUEST_CID,
            dst_cid: super::HOST_CID,
            src_port,
            dst_port,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 1 << 20,
            fwd_cnt: 0,
        };
        self.mem.write_obj(h, GuestAddress(at)).unwrap();
        self.tx
            .store(i, SplitDescriptor::new(at, HDR_LEN as u32, 0, 0));
        self.tx.publish(i);
        self.tx_published += 1;
        self.kicks[1].write(1).unwrap();
    }

    /// Waits for `n` more used rx buffers; their packet headers.
    fn rx_packets(&mut self, n: usize) -> Vec<Header> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "waited for {n} rx packets, got {got:?}"
            );
            for (id, len) in self.rx.take_used() {
                assert!(
                    len as usize >= HDR_LEN,
                    "rx buffer {id} used with {len} bytes"
                );
                let at = 0x10_0000 + u64::from(id) * 4096;
                got.push(self.mem.read_obj(GuestAddress(at)).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        got
    }
}

fn sock_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hull-vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const OP_REQUEST: u16 = super::packet::OP_REQUEST;
const OP_RESPONSE: u16 = super::packet::OP_RESPONSE;
const OP_RW: u16 = super::packet::OP_RW;

/// Two guest connections to host port 7, both answered; returns the host
/// ends in the order of the guest ports 1000 and 1001.
fn two_connections(rig: &mut Rig, host7: &UnixListener) -> [UnixStream; 2] {
    rig.give_rx(2, 4096);
    rig.send(OP_REQUEST, 1000, 7);
    let a = host7.accept().unwrap().0;
    rig.send(OP_REQUEST, 1001, 7);
    let b = host7.accept().unwrap().0;
    let answers = rig.rx_packets(2);
    assert!(
        answers.iter().all(|h| { h.op } == OP_RESPONSE),
        "{answers:?}"
    );
    [a, b]
}

/// Host data waits on two connections; the guest hands out rx buffers two
/// at a time. Each round goes to the other connection: one busy stream does
/// not starve the rest.
#[test]
fn connections_with_data_get_rx_buffers_in_turn() {
    let dir = sock_dir("fair");
    let uds = dir.join("v.sock");
    let host7 = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
    let mut rig = Rig::new();
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.activate(rig.activation(None), F_VERSION_1).unwrap();
    let [mut a, mut b] = two_connections(&mut rig, &host7);
    a.write_all(&[b'a'; 16 * 1024]).unwrap();
    b.write_all(&[b'b'; 16 * 1024]).unwrap();
    // Both host sockets are seen readable before any buffer is offered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dev
        .active()
        .map_or(0, |a| super::device::lock(&a.muxer).conns_with_data())
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "host data never seen");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let mut turns = Vec::new();
    for _ in 0..6 {
        rig.give_rx(2, 1024);
        let got = rig.rx_packets(2);
        let ports: Vec<u32> = got.iter().map(|h| h.dst_port).collect();
        assert!(got.iter().all(|h| { h.op } == OP_RW), "{got:?}");
        assert_eq!(ports[0], ports[1], "one batch, one connection: {got:?}");
        turns.push(ports[0]);
    }
    assert_eq!(turns, [1000, 1001, 1000, 1001, 1000, 1001]);
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device with an open connection and host data waiting is saved, and a
/// fresh device restored from the state over the same guest memory carries
/// on: it tells the guest its connections are gone (TRANSPORT_RESET on the
/// event queue), the old host connection is closed, and new connections
/// work both ways.
#[test]
fn a_restored_device_resets_the_transport_and_carries_on() {
    let dir = sock_dir("restore");
    let uds = dir.join("v.sock");
    let host7 = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
    let mut rig = Rig::new();
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.activate(rig.activation(None), F_VERSION_1).unwrap();
    // The driver fills the event queue at start.
    rig.ev.store(0, SplitDescriptor::new(0x70_0000, 8, 2, 0));
    rig.mem
        .write_obj(0xffff_ffffu32, GuestAddress(0x70_0000))
        .unwrap();
    rig.ev.publish(0);
    let [mut a, _b] = two_connections(&mut rig, &host7);
    a.write_all(&[b'x'; 8192]).unwrap(); // queued: no rx buffer for it

    let state = dev.save();
    let json = serde_json::to_string(&state).unwrap();
    drop(dev);
    let mut eof = [0u8; 1];
    a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Closed: end of file, or a reset since the host's data was never read.
    match a.read(&mut eof) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the old host connection stays open: {other:?}"),
    }

    let state: super::super::persist::DeviceState = serde_json::from_str(&json).unwrap();
    let saved = state.virtio();
    assert_eq!(saved.queues.len(), 3);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[1].next_avail),
        (2, 2)
    );
    let queues = super::super::persist::queues_from(&saved.queues).unwrap();
    let _ = rig.irq.read(); // interrupts of the saved device
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.restore(&state, Some(rig.activation(Some(queues))))
        .unwrap();

    assert_eq!(rig.ev.take_used(), [(0, 4)]);
    let id: u32 = rig.mem.read_obj(GuestAddress(0x70_0000)).unwrap();
    assert_eq!(id, super::persist::EVENT_TRANSPORT_RESET);
    assert!(rig.irq.read().is_ok(), "no interrupt for the reset event");

    // Guest -> host: a new connection from a new port.
    rig.give_rx(2, 4096);
    rig.send(OP_REQUEST, 1002, 7);
    let _c = host7.accept().unwrap().0;
    let got = rig.rx_packets(1);
    assert_eq!(({ got[0].op }, { got[0].dst_port }), (OP_RESPONSE, 1002));
    // Host -> guest: CONNECT reaches the guest as a request.
    let mut h = UnixStream::connect(&uds).unwrap();
    h.write_all(b"CONNECT 5000\n").unwrap();
    let got = rig.rx_packets(1);
    assert_eq!(({ got[0].op }, { got[0].dst_port }), (OP_REQUEST, 5000));
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A device saved before the host ever connected (a template) sends no
/// transport reset: one would race with the restored guest's first
/// connection, which the guest could accept and then reset.
#[test]
fn a_device_saved_without_connections_sends_no_reset() {
    let dir = sock_dir("restore-idle");
    let uds = dir.join("v.sock");
    let mut rig = Rig::new();
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.activate(rig.activation(None), F_VERSION_1).unwrap();
    rig.ev.store(0, SplitDescriptor::new(0x70_0000, 8, 2, 0));
    rig.ev.publish(0);
    let state = dev.save();
    drop(dev);
    let queues = super::super::persist::queues_from(&state.virtio().queues).unwrap();
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.restore(&state, Some(rig.activation(Some(queues))))
        .unwrap();
    assert!(rig.ev.take_used().is_empty(), "a reset event was sent");
    let mut h = UnixStream::connect(&uds).unwrap();
    h.write_all(b"CONNECT 5000\n").unwrap();
    rig.give_rx(1, 4096);
    let got = rig.rx_packets(1);
    assert_eq!(({ got[0].op }, { got[0].dst_port }), (OP_REQUEST, 5000));
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Paused, the device leaves its queues and host sockets alone; resumed,
/// it carries on with the same connections and what waited meanwhile.
#[test]
fn a_paused_device_keeps_its_connections_and_resumes() {
    let dir = sock_dir("pause");
    let uds = dir.join("v.sock");
    let host7 = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
    let mut rig = Rig::new();
    let mut dev = Vsock::new(GUEST_CID, &uds).unwrap();
    dev.activate(rig.activation(None), F_VERSION_1).unwrap();
    let [mut a, _b] = two_connections(&mut rig, &host7);
    dev.pause();
    a.write_all(b"while paused").unwrap();
    rig.give_rx(1, 4096);
    rig.send(OP_REQUEST, 1002, 7);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        rig.rx.take_used().is_empty(),
        "a paused device filled rx buffers"
    );
    assert_eq!(rig.tx.used_idx(), 2, "a paused device took a tx packet");

    dev.resume().unwrap();
    let _c = host7.accept().unwrap().0;
    rig.give_rx(1, 4096);
    let got = rig.rx_packets(2);
    let mut seen: Vec<(u16, u32)> = got.iter().map(|h| (h.op, h.dst_port)).collect();
    seen.sort();
    assert_eq!(seen, [(OP_RESPONSE, 1002), (OP_RW, 1000)]);
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}
