//! Entry points for the cargo-fuzz targets in `vmm/fuzz` (README,
//! "Fuzzing"). Each takes the fuzzer's bytes as what a hostile guest
//! controls: guest memory holding the queues' descriptor tables, rings and
//! buffers. Each then runs a device over that memory, the way the device
//! runs in hull-vmm. Built with `--cfg fuzzing` (cargo fuzz sets it) and for
//! the unit tests, which run each target on a few inputs so that they keep
//! building and working.
//!
//! Layout: 1 MiB of guest memory, the input copied in from address 0 after
//! one leading byte of options. Queue n (16 entries) has its descriptor
//! table at n * 0x400, its available ring 0x100 after that and its used ring
//! 0x200 after that. Buffers may point anywhere, inside memory or not.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, Permissions};
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::EventLoop;
use super::iov::{GuestIovecs, segments};
use super::{Activation, Interrupt, VirtioDevice};

const MEM: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
/// Bytes of the disk the block target serves.
const DISK_BYTES: u64 = 8192;

/// Guest memory from the input, and the option byte (bit 0: EVENT_IDX).
fn guest(data: &[u8]) -> Option<(GuestMemoryMmap, bool)> {
    let (&options, image) = data.split_first()?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).ok()?;
    mem.write_slice(&image[..image.len().min(MEM)], GuestAddress(0))
        .ok()?;
    Some((mem, options & 1 != 0))
}

/// Queue `n` of the layout, ready as a driver would leave it; None when the
/// input makes it invalid (the transport refuses such a queue).
fn queue(mem: &GuestMemoryMmap, n: u32, event_idx: bool) -> Option<Queue> {
    let base = n * 0x400;
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x100), Some(0));
    q.set_used_ring_address(Some(base + 0x200), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// Descriptor chains: every chain the queue yields is walked as the devices
/// walk it: its Reader and Writer, its buffers as segments and as host
/// iovecs. The segments of a chain whose Reader and Writer exist cover
/// exactly their bytes and lie in guest memory.
pub fn descriptor_chains(data: &[u8]) {
    let Some((mem, event_idx)) = guest(data) else {
        return;
    };
    let Some(mut q) = queue(&mem, 0, event_idx) else {
        return;
    };
    while let Some(chain) = q.pop_descriptor_chain(&mem) {
        let head = chain.head_index();
        let whole = chain.clone();
        let sizes = chain.clone().reader(&mem).and_then(|r| {
            chain
                .writer(&mem)
                .map(|w| (r.available_bytes(), w.available_bytes()))
        });
        if let Ok((readable, writable)) = sizes {
            for (writes, want) in [(false, readable), (true, writable)] {
                let segs = segments(&whole, writes, 0, usize::MAX);
                let total: usize = segs.iter().map(|s| s.1).sum();
                assert_eq!(total, want, "segments of a valid chain");
                let access = if writes {
                    Permissions::Write
                } else {
                    Permissions::Read
                };
                assert!(GuestIovecs::new(&mem, &segs, access).is_ok());
            }
        }
        let _ = q.add_used(&mem, head, 0);
    }
}

/// The disk file the block target serves (a fresh one per process).
fn disk_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hull-fuzz-blk-{}", std::process::id()));
        std::fs::write(&path, vec![0x5a; DISK_BYTES as usize]).expect("fuzz disk file");
        path
    })
}

/// virtio-blk requests: every chain is answered; the length reported used
/// never exceeds the chain's writable bytes, and the disk never grows.
/// Bit 1 of the option byte makes the disk read-only.
pub fn block_requests(data: &[u8]) {
    let Some((mem, event_idx)) = guest(data) else {
        return;
    };
    let Some(mut q) = queue(&mem, 0, event_idx) else {
        return;
    };
    let read_only = data.first().is_some_and(|o| o & 2 != 0);
    let block = super::block::Block::open(disk_file(), read_only, Some("fuzz")).expect("disk");
    let mut disk = block.handler().expect("disk handler");
    serve_within_writable(&mem, &mut q, disk.as_mut());
    let len = std::fs::metadata(disk_file()).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, DISK_BYTES, "the disk changed size");
}

/// Answers every chain of `q` with `h`, checking that no answer claims
/// more bytes than the chain's writable buffers hold.
fn serve_within_writable(
    mem: &GuestMemoryMmap,
    q: &mut Queue,
    h: &mut (impl super::queue_worker::RequestHandler + ?Sized),
) {
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let writable: u64 = chain
            .clone()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        let used = h.handle(mem, chain);
        assert!(
            u64::from(used) <= writable,
            "used {used} > writable {writable}"
        );
        let _ = q.add_used(mem, head, used);
    }
}

/// The share the fs target serves (one per process): a directory holding
/// one file, beside a file the guest must never reach.
fn fs_share() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let top = std::env::temp_dir().join(format!("hull-fuzz-fs-{}", std::process::id()));
        let share = top.join("share");
        std::fs::create_dir_all(&share).expect("fuzz share");
        std::fs::write(top.join("outside"), b"outside").expect("fuzz file");
        std::fs::write(share.join("file"), b"inside").expect("fuzz file");
        share
    })
}

/// The fs target's two devices over the share (read-write, read-only),
/// made once per process (each has a thread of its own).
fn fs_devices() -> &'static [super::fs::Fs; 2] {
    static DEVS: OnceLock<[super::fs::Fs; 2]> = OnceLock::new();
    DEVS.get_or_init(|| {
        let el = super::event_loop::test_loop();
        // A DAX window too, so that SETUPMAPPING and REMOVEMAPPING are
        // served (the window's host pages are never touched here).
        let dev = |ro| {
            let w = super::fs::dax::DaxWindow::new(0, 4 << 20).expect("DAX window");
            super::fs::Fs::new("fuzz", fs_share(), ro, &el)
                .expect("fs device")
                .with_window(std::sync::Arc::new(w))
        };
        [dev(false), dev(true)]
    })
}

/// virtio-fs requests (FUSE messages in guest buffers) on the hiprio queue
/// (0) and the request queue (1): every chain is answered within its
/// writable bytes, nothing panics, and the file beside the share is never
/// touched. Bit 1 of the option byte makes the share read-only.
pub fn fs_requests(data: &[u8]) {
    let Some((mem, event_idx)) = guest(data) else {
        return;
    };
    let read_only = data.first().is_some_and(|o| o & 2 != 0);
    let share = fs_share();
    let dev = &fs_devices()[usize::from(read_only)];
    for n in 0..2 {
        let Some(mut q) = queue(&mem, n, event_idx) else {
            continue;
        };
        serve_within_writable(&mem, &mut q, &mut dev.handler());
    }
    let outside = share.parent().expect("share has a parent").join("outside");
    assert_eq!(
        std::fs::read(outside).ok().as_deref(),
        Some(&b"outside"[..])
    );
}

/// The vsock device the vsock target drives (one per process: it listens
/// on a Unix socket), re-activated for every input.
struct VsockRig {
    dev: super::vsock::Vsock,
    event_loop: EventLoop,
}

fn vsock_rig() -> &'static Mutex<VsockRig> {
    static RIG: OnceLock<Mutex<VsockRig>> = OnceLock::new();
    RIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        let event_loop = super::event_loop::test_loop();
        let dev = super::vsock::Vsock::new(3, &dir.join("v.sock")).expect("vsock device");
        Mutex::new(VsockRig { dev, event_loop })
    })
}

/// virtio-vsock packets: the guest's tx queue (queue 1) is served, then its
/// rx queue (queue 0) gets whatever answers the device has; nothing panics,
/// and the device resets cleanly afterwards.
pub fn vsock_packets(data: &[u8]) {
    let Some((mem, event_idx)) = guest(data) else {
        return;
    };
    let (Some(rxq), Some(txq), Some(evq)) = (
        queue(&mem, 0, event_idx),
        queue(&mem, 1, event_idx),
        queue(&mem, 2, event_idx),
    ) else {
        return;
    };
    let mut rig = vsock_rig().lock().unwrap_or_else(|p| p.into_inner());
    let evts: Vec<EventFd> = (0..3)
        .filter_map(|_| EventFd::new(libc::EFD_NONBLOCK).ok())
        .collect();
    let (Some(rx_fd), Some(tx_fd)) = (
        evts.first().map(|e| e.as_raw_fd()),
        evts.get(1).map(|e| e.as_raw_fd()),
    ) else {
        return;
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let activation = Activation {
        mem,
        queues: vec![rxq, txq, evq],
        queue_evts: evts,
        interrupt: Interrupt::new(irq),
        event_loop: rig.event_loop.clone(),
    };
    let features = super::F_VERSION_1 | if event_idx { super::F_EVENT_IDX } else { 0 };
    if rig.dev.activate(activation, features).is_ok() {
        rig.dev.handle_now(tx_fd);
        rig.dev.handle_now(rx_fd);
    }
    rig.dev.reset();
}

/// The host side of the net target's stand-in tap, and the device side.
fn net_sockets() -> Option<(std::fs::File, std::os::unix::net::UnixDatagram)> {
    let (dev, host) = std::os::unix::net::UnixDatagram::pair().ok()?;
    dev.set_nonblocking(true).ok()?;
    host.set_nonblocking(true).ok()?;
    Some((std::fs::File::from(std::os::fd::OwnedFd::from(dev)), host))
}

/// virtio-net frames: the guest's tx queue (queue 1) is served, then
/// frames from the host side (their lengths from the input's last bytes)
/// go into its rx queue (queue 0), then the rx queue is kicked. Every frame
/// that reaches the host side holds a header and at most the largest frame;
/// the device's counts agree with both sides. Option bits:
/// 1 EVENT_IDX, 2 mergeable rx buffers, 4 segmentation offloads.
pub fn net_frames(data: &[u8]) {
    use super::net::backend::{Backend, BackendParts};
    use super::net::{F_GUEST_CSUM, F_GUEST_TSO4, F_MRG_RXBUF, HDR_LEN, MAX_TX_BYTES};
    use vmm_sys_util::epoll::EventSet;

    let Some((mem, event_idx)) = guest(data) else {
        return;
    };
    let (Some(rxq), Some(txq)) = (queue(&mem, 0, event_idx), queue(&mem, 1, event_idx)) else {
        return;
    };
    let options = data.first().copied().unwrap_or(0);
    let mut acked = super::F_VERSION_1;
    for (bit, features) in [
        (1, super::F_EVENT_IDX),
        (2, F_MRG_RXBUF),
        (4, F_GUEST_CSUM | F_GUEST_TSO4),
    ] {
        if options & bit != 0 {
            acked |= features;
        }
    }
    let Some((tap, host)) = net_sockets() else {
        return;
    };
    let evt = || EventFd::new(libc::EFD_NONBLOCK).ok();
    let (Some(rx_evt), Some(tx_evt), Some(irq)) = (evt(), evt(), evt()) else {
        return;
    };
    let (rx_fd, tx_fd, tap_fd) = (rx_evt.as_raw_fd(), tx_evt.as_raw_fd(), tap.as_raw_fd());
    let mut b = Backend::new(BackendParts {
        mem: mem.clone(),
        rxq,
        txq,
        rx_evt,
        tx_evt,
        tap,
        interrupt: Interrupt::new(irq),
        acked_features: acked,
    });
    b.handle_fd(tx_fd, EventSet::IN);
    let mut buf = vec![0u8; MAX_TX_BYTES + 1];
    let mut reached = 0u64;
    while let Ok(n) = host.recv(&mut buf) {
        reached += 1;
        assert!(
            (HDR_LEN..=MAX_TX_BYTES).contains(&n),
            "a {n}-byte frame reached the tap"
        );
    }
    // (frames, payload bytes) the host side sent.
    let mut sent = (0u64, 0u64);
    for &s in data.iter().rev().take(4) {
        let len = (HDR_LEN + usize::from(s) * 97).min(buf.len());
        if host.send(&buf[..len]).is_ok() {
            sent.0 += 1;
            sent.1 += (len - HDR_LEN) as u64;
        }
    }
    b.handle_fd(tap_fd, EventSet::IN);
    b.handle_fd(rx_fd, EventSet::IN);
    // The used ring itself is guest memory (the guest may point rx buffers
    // at it), so the device's own counts are checked: every frame it says it
    // sent reached the host side, and it delivered or dropped no more frames,
    // nor more bytes, than the host side sent.
    let s = b.stats();
    assert_eq!(reached, s.tx_frames, "frames sent and frames at the tap");
    assert!(
        s.rx_frames + s.rx_dropped <= sent.0,
        "more frames than sent"
    );
    assert!(s.rx_bytes <= sent.1, "more bytes than sent");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{TestRng, fuzz_iters};

    /// Inputs as the fuzzer would start from: a queue of chains over
    /// buffers of random sizes and places, mostly inside memory.
    fn input(rng: &mut TestRng) -> Vec<u8> {
        let mut data = vec![0u8; 1 + 0x4000];
        data[0] = (rng.next() % 4) as u8;
        for q in 0..3usize {
            let base = 1 + q * 0x400;
            for i in 0..usize::from(QUEUE_SIZE) {
                let r = rng.next();
                let addr = rng.pick(&[0x1000 + i as u64 * 0x100, 0x3000, 0xf_fff0, r]);
                let len = rng.pick(&[0u32, 16, 44, 100, 0x100, 4096, r as u32]);
                let flags = (rng.next() % 8) as u16;
                let next = (rng.next() % 17) as u16;
                let d = base + i * 16;
                data[d..d + 8].copy_from_slice(&addr.to_le_bytes());
                data[d + 8..d + 12].copy_from_slice(&len.to_le_bytes());
                data[d + 12..d + 14].copy_from_slice(&flags.to_le_bytes());
                data[d + 14..d + 16].copy_from_slice(&next.to_le_bytes());
            }
            let avail = base + 0x100;
            let n = (rng.next() % 20) as u16;
            data[avail + 2..avail + 4].copy_from_slice(&n.to_le_bytes());
            for i in 0..usize::from(QUEUE_SIZE) {
                let head = (rng.next() % 17) as u16;
                data[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&head.to_le_bytes());
            }
        }
        for b in &mut data[1 + 0x1000..] {
            *b = rng.next() as u8;
        }
        data
    }

    #[test]
    fn fuzz_targets_survive_random_queues() {
        let mut rng = TestRng(0x0123_4567_89ab_cdef);
        for _ in 0..fuzz_iters() / 20 {
            let data = input(&mut rng);
            descriptor_chains(&data);
            block_requests(&data);
            vsock_packets(&data);
            net_frames(&data);
            fs_requests(&data);
        }
        // Inputs too short to hold anything are not errors either.
        for data in [&[][..], &[1], &[3, 0, 0]] {
            descriptor_chains(data);
            block_requests(data);
            vsock_packets(data);
            net_frames(data);
            fs_requests(data);
        }
    }

    /// Found by the fuzz targets: a guest whose available index runs more
    /// than the queue size ahead kept a device's loop (and the one event-loop
    /// thread) spinning forever. Each target must return.
    #[test]
    fn an_available_index_past_the_queue_does_not_spin() {
        let mut data = vec![0u8; 1 + 0x1000];
        for q in 0..3 {
            let idx = 1 + q * 0x400 + 0x100 + 2;
            data[idx..idx + 2].copy_from_slice(&40u16.to_le_bytes());
        }
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for options in [0u8, 1] {
                data[0] = options;
                block_requests(&data);
                vsock_packets(&data);
                net_frames(&data);
                fs_requests(&data);
            }
            let _ = done.send(());
        });
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_secs(30))
                .is_ok(),
            "a device kept spinning on an available index past its queue"
        );
    }
}
