//! A driver's side of a split virtqueue for device unit tests.

use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries of every test queue.
pub const QUEUE_SIZE: u16 = 256;

/// A split queue in guest memory that the test drives by hand, laid out
/// here (virtio-queue's mock places its used ring inside the available
/// ring for queues this large): descriptors at `at`, the available ring
/// 4 KiB on, the used ring 8 KiB on.
pub struct TestQueue {
    mem: GuestMemoryMmap,
    at: u64,
    /// Buffers published so far (the available index).
    pub avail: u16,
    used_seen: u16,
}

impl TestQueue {
    pub fn new(mem: &GuestMemoryMmap, at: u64) -> TestQueue {
        mem.write_slice(&[0u8; 0x3000], GuestAddress(at)).unwrap();
        TestQueue {
            mem: mem.clone(),
            at,
            avail: 0,
            used_seen: 0,
        }
    }
    pub fn avail_addr(&self) -> u64 {
        self.at + 0x1000
    }
    pub fn used_addr(&self) -> u64 {
        self.at + 0x2000
    }
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_size(QUEUE_SIZE);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.at);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail_addr());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used_addr());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }
    pub fn store(&self, i: u16, d: SplitDescriptor) {
        self.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(self.at + u64::from(i) * 16),
            )
            .unwrap();
    }
    pub fn publish(&mut self, head: u16) {
        let ring = self.avail_addr() + 4 + u64::from(self.avail % QUEUE_SIZE) * 2;
        self.mem.write_obj(head, GuestAddress(ring)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(self.avail_addr() + 2))
            .unwrap();
    }
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used_addr() + 2))
            .unwrap()
    }
    /// (descriptor id, length) of the used entries not seen yet.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        let end = self.used_idx();
        while self.used_seen != end {
            let at = self.used_addr() + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
