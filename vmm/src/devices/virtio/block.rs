//! virtio-blk backed by a raw host file: read, write, flush, get-id;
//! read-only disks refuse writes with an I/O error status; host I/O errors
//! become VIRTIO_BLK_S_IOERR and the VM goes on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap, Permissions};

use super::iov::{GuestIovecs, segments};
use super::persist::{DeviceState, PersistError, VirtioState};
use super::queue_worker::{Chain, RequestHandler, SingleQueue, single_queue_lifecycle};
use super::{
    ActivateError, Activation, F_EVENT_IDX, F_VERSION_1, LogLimit, TYPE_BLOCK, VirtioDevice,
    read_config_bytes,
};

pub const SECTOR_SIZE: u64 = 512;
/// Longest disk id (the serial the guest sees).
pub const ID_BYTES: usize = 20;
const QUEUE_SIZE: u16 = 256;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
/// VIRTIO_RING_F_INDIRECT_DESC: a request's buffers in a table of their own,
/// so a large request takes one ring slot instead of up to seg_max + 2, and
/// many requests fit in the ring at once (virtio-queue walks the tables).
const F_INDIRECT_DESC: u64 = 1 << 28;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {path}: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("disk id {0:?} is longer than {ID_BYTES} bytes")]
    IdTooLong(String),
    #[error("creating an empty disk slot")]
    Empty(#[source] std::io::Error),
}

/// The request header the driver puts first in every chain.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct RequestHeader {
    kind: u32,
    ioprio: u32,
    sector: u64,
}

// SAFETY: a plain C struct of integers without padding; every byte pattern
// is a valid value.
unsafe impl ByteValued for RequestHeader {}

pub struct Block {
    file: File,
    read_only: bool,
    sectors: u64,
    id: Vec<u8>,
    config: [u8; 24],
    queue: SingleQueue<Disk>,
    /// An empty slot of the snapshot got a disk at restore: the guest is
    /// told its configuration (capacity) changed.
    filled_at_restore: bool,
}

/// What a block device saves. Requests are answered as they are popped,
/// so none is in flight; the disk itself is the host file, opened again
/// on restore, and must be the same size and mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    pub virtio: VirtioState,
    pub sectors: u64,
    pub read_only: bool,
}

impl Block {
    /// The request handler, on a clone of the file.
    fn disk(&self) -> std::io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            read_only: self.read_only,
            sectors: self.sectors,
            id: self.id.clone(),
            errors: LogLimit::default(),
        })
    }

    /// The request handler alone (the fuzz targets drive it without a
    /// transport).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn handler(&self) -> std::io::Result<Box<dyn RequestHandler>> {
        Ok(Box::new(self.disk()?))
    }

    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Block, BlockError> {
        let open_err = |error| BlockError::Open {
            path: path.to_path_buf(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let len = file.metadata().map_err(open_err)?.len();
        Self::with_file(file, len, read_only, id)
    }

    /// An empty slot: a disk of zero sectors (on an empty memfd) that a
    /// restore may give a file (see [`VirtioDevice::restore`]): a template
    /// declares the disks its clones will have.
    pub fn empty() -> Result<Block, BlockError> {
        // SAFETY: the name is a NUL-terminated string; the call only
        // returns a new descriptor (or -1), which is owned right below.
        let fd = unsafe { libc::memfd_create(c"hull-empty-disk".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(BlockError::Empty(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else
        // owns it.
        let file = File::from(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        Self::with_file(file, 0, false, None)
    }

    fn with_file(
        file: File,
        len: u64,
        read_only: bool,
        id: Option<&str>,
    ) -> Result<Block, BlockError> {
        let id = id.unwrap_or_default().as_bytes().to_vec();
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong(String::from_utf8_lossy(&id).into()));
        }
        let sectors = len / SECTOR_SIZE;
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&sectors.to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
        Ok(Block {
            file,
            read_only,
            sectors,
            id,
            config,
            queue: SingleQueue::default(),
            filled_at_restore: false,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        F_VERSION_1
            | F_SEG_MAX
            | F_FLUSH
            | F_EVENT_IDX
            | F_INDIRECT_DESC
            | if self.read_only { F_RO } else { 0 }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, a: Activation, features: u64) -> Result<(), ActivateError> {
        let disk = self.disk().map_err(|error| ActivateError::Clone {
            what: "the disk file",
            error,
        });
        self.queue.serve(a, features, || disk)
    }
    single_queue_lifecycle!();
    fn save(&mut self) -> DeviceState {
        DeviceState::Block(BlockState {
            virtio: self.queue.save(),
            sectors: self.sectors,
            read_only: self.read_only,
        })
    }
    fn config_changed_at_restore(&self) -> bool {
        self.filled_at_restore
    }
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError> {
        let DeviceState::Block(s) = state else {
            return Err(PersistError::WrongDevice {
                found: state.kind(),
                want: "block",
            });
        };
        s.virtio.check_version()?;
        // A slot that was empty in the snapshot (zero sectors, offered
        // writable so any disk fits it) takes whatever disk this restore
        // gives it; the guest learns its size from a configuration change.
        // A read-only disk there is read-only on the host's side: writes
        // fail with an I/O error, as on any read-only disk.
        let slot = s.sectors == 0 && !s.read_only;
        if slot {
            self.filled_at_restore = self.sectors > 0;
        } else if (s.sectors, s.read_only) != (self.sectors, self.read_only) {
            return Err(PersistError::Mismatch(format!(
                "the disk was {} sectors{}, it is {} sectors{}",
                s.sectors,
                if s.read_only { " read-only" } else { "" },
                self.sectors,
                if self.read_only { " read-only" } else { "" },
            )));
        }
        s.virtio
            .reactivate(a, |a, features| self.activate(a, features))
    }
}

/// The request-serving half, owned by the event loop.
struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    id: Vec<u8>,
    errors: LogLimit,
}

impl Disk {
    /// Byte offset of `sector` if `len` bytes from there stay on the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len as u64)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(start)
    }

    /// Reads `len` bytes at `sector` straight into the guest buffers `segs`
    /// (no bounce buffer: one copy, by the kernel).
    fn read_into(
        &mut self,
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, usize)],
        sector: u64,
        len: usize,
    ) -> Result<usize, u8> {
        let off = self.range(sector, len).ok_or(S_IOERR)?;
        self.transfer(mem, segs, off, false)
            .map(|()| len)
            .map_err(|e| self.io_error("read", e))
    }

    /// Writes the guest buffers `segs` (`len` bytes) at `sector`.
    fn write_from(
        &mut self,
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, usize)],
        sector: u64,
        len: usize,
    ) -> Result<(), u8> {
        if self.read_only {
            return Err(S_IOERR);
        }
        let off = self.range(sector, len).ok_or(S_IOERR)?;
        self.transfer(mem, segs, off, true)
            .map_err(|e| self.io_error("write", e))
    }

    /// Moves the bytes of `segs` between guest memory and the file at `off`
    /// with one preadv/pwritev per request (as many as short transfers need):
    /// the guest buffers are the iovecs, so there is no copy of our own and
    /// one syscall where a segment each would cost hundreds.
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        segs: &[(GuestAddress, usize)],
        off: u64,
        write: bool,
    ) -> std::io::Result<()> {
        // Writing the file reads guest memory, and reading it writes there.
        let access = if write {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let mut iovs = GuestIovecs::new(mem, segs, access)?;
        let want: usize = segs.iter().map(|s| s.1).sum();
        if super::iov::transfer(self.file.as_raw_fd(), &mut iovs, off, write)? < want {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn io_error(&mut self, what: &str, e: std::io::Error) -> u8 {
        if self.errors.allow() {
            log::warn!("virtio-blk: host {what} failed: {e}");
        }
        S_IOERR
    }
}

/// Bytes of the request header at the start of the readable buffers.
const HEADER_BYTES: usize = std::mem::size_of::<RequestHeader>();

impl RequestHandler for Disk {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let whole = chain.clone();
        let parts = chain
            .clone()
            .reader(mem)
            .and_then(|r| chain.writer(mem).map(|w| (r, w)));
        let (mut reader, mut writer) = match parts {
            Ok(p) => p,
            Err(e) => {
                if self.errors.allow() {
                    log::warn!("virtio-blk: malformed descriptor chain: {e}");
                }
                return 0;
            }
        };
        let writable = writer.available_bytes();
        if writable == 0 {
            if self.errors.allow() {
                log::warn!("virtio-blk: request without a status byte dropped");
            }
            return 0;
        }
        let Ok(mut status_w) = writer.split_at(writable - 1) else {
            return 0;
        };
        let mut data_written = 0usize;
        let status = match reader.read_obj::<RequestHeader>() {
            Err(_) => S_IOERR,
            Ok(h) => match h.kind {
                T_IN => {
                    let len = writer.available_bytes();
                    let segs = segments(&whole, true, 0, len);
                    match self.read_into(mem, &segs, h.sector, len) {
                        Ok(n) => {
                            data_written = n;
                            S_OK
                        }
                        Err(s) => s,
                    }
                }
                T_OUT => {
                    let len = reader.available_bytes();
                    let segs = segments(&whole, false, HEADER_BYTES, len);
                    self.write_from(mem, &segs, h.sector, len)
                        .err()
                        .unwrap_or(S_OK)
                }
                T_FLUSH => match self.file.sync_data() {
                    Ok(()) => S_OK,
                    Err(e) => self.io_error("flush", e),
                },
                T_GET_ID => {
                    let n = writer.available_bytes().min(ID_BYTES);
                    let mut id = [0u8; ID_BYTES];
                    id[..self.id.len()].copy_from_slice(&self.id);
                    match writer.write_all(&id[..n]) {
                        Ok(()) => {
                            data_written = n;
                            S_OK
                        }
                        Err(_) => S_IOERR,
                    }
                }
                _ => S_UNSUPP,
            },
        };
        match status_w.write_all(&[status]) {
            Ok(()) => (data_written + 1) as u32,
            Err(_) => data_written as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{TestRng, fuzz_iters};
    use std::os::unix::fs::FileExt;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    struct Setup {
        mem: GuestMemoryMmap,
        disk: Disk,
        _file: tempfile_path::TempPath,
    }

    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn setup(read_only: bool, content: &[u8]) -> Setup {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hull-blk-{}-{n}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        let disk = Block::open(&path, read_only, Some("layer0"))
            .unwrap()
            .disk()
            .unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        Setup {
            mem,
            disk,
            _file: tempfile_path::TempPath(path),
        }
    }

    /// Runs one request: header at 0x1000, data at 0x2000 (len, device-
    /// writable for reads), status at 0x3000. Returns (used len, status).
    fn request(
        s: &mut Setup,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_writable: bool,
    ) -> (u32, u8) {
        let hdr = RequestHeader {
            kind,
            ioprio: 0,
            sector,
        };
        s.mem.write_obj(hdr, GuestAddress(0x1000)).unwrap();
        s.mem.write_obj(0xffu8, GuestAddress(0x3000)).unwrap();
        let vq = MockSplitQueue::new(&s.mem, 16);
        let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(
            0x1000, 16, NEXT, 1,
        ))];
        if data_len > 0 {
            let f = NEXT | if data_writable { WRITE } else { 0 };
            descs.push(RawDescriptor::from(SplitDescriptor::new(
                0x2000, data_len, f, 2,
            )));
        }
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x3000, 1, WRITE, 0,
        )));
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&s.mem).unwrap();
        let used = s.disk.handle(&s.mem, chain);
        (used, s.mem.read_obj(GuestAddress(0x3000)).unwrap())
    }

    #[test]
    fn reads_the_file() {
        let content: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let mut s = setup(true, &content);
        let (used, status) = request(&mut s, T_IN, 1, 1024, true);
        assert_eq!((used, status), (1025, S_OK));
        let mut got = vec![0u8; 1024];
        s.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(got, content[512..1536]);
    }

    #[test]
    fn writes_reach_the_file_unless_read_only() {
        let mut s = setup(false, &[0u8; 4096]);
        s.mem
            .write_slice(&[7u8; 512], GuestAddress(0x2000))
            .unwrap();
        assert_eq!(request(&mut s, T_OUT, 2, 512, false), (1, S_OK));
        let mut back = [0u8; 512];
        s.disk.file.read_exact_at(&mut back, 1024).unwrap();
        assert_eq!(back, [7u8; 512]);

        let mut ro = setup(true, &[0u8; 4096]);
        assert_eq!(request(&mut ro, T_OUT, 0, 512, false).1, S_IOERR);
    }

    #[test]
    fn out_of_range_and_unknown_requests_fail_cleanly() {
        let mut s = setup(true, &[0u8; 4096]);
        assert_eq!(
            request(&mut s, T_IN, 8, 512, true).1,
            S_IOERR,
            "past the end"
        );
        assert_eq!(
            request(&mut s, T_IN, u64::MAX / 2, 512, true).1,
            S_IOERR,
            "overflow"
        );
        assert_eq!(request(&mut s, 99, 0, 0, true).1, S_UNSUPP);
    }

    #[test]
    fn get_id_and_flush() {
        let mut s = setup(false, &[0u8; 4096]);
        let (used, status) = request(&mut s, T_GET_ID, 0, 20, true);
        assert_eq!((used, status), (21, S_OK));
        let mut id = [0u8; 20];
        s.mem.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(&id[..6], b"layer0");
        assert_eq!(request(&mut s, T_FLUSH, 0, 0, true).1, S_OK);
    }

    #[test]
    fn chain_outside_memory_is_dropped() {
        let mut s = setup(true, &[0u8; 4096]);
        let vq = MockSplitQueue::new(&s.mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0xfff_0000, 512, NEXT | WRITE, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x3000, 1, WRITE, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&s.mem).unwrap();
        assert_eq!(s.disk.handle(&s.mem, chain), 0);
    }

    #[test]
    fn long_ids_are_refused() {
        let path = std::env::temp_dir().join(format!("hull-blk-id-{}", std::process::id()));
        std::fs::write(&path, [0u8; 512]).unwrap();
        assert!(matches!(
            Block::open(&path, true, Some("an-id-that-is-far-too-long")),
            Err(BlockError::IdTooLong(_))
        ));
        let _ = std::fs::remove_file(path);
    }

    /// Random descriptor chains (addresses in and out of guest memory, any
    /// length, loops through `next`, any flags) carrying random requests:
    /// the device never panics, never grows the file and never reports more
    /// bytes written than the chain's writable buffers hold.
    #[test]
    fn random_chains_and_requests_are_survived() {
        for read_only in [false, true] {
            let mut s = setup(read_only, &[0x5au8; 8192]);
            let mut rng = TestRng(0x9e37_79b9_7f4a_7c15 ^ u64::from(read_only));
            for _ in 0..fuzz_iters() {
                s.mem.write_slice(&[0u8; 0x1000], GuestAddress(0)).unwrap();
                let r = rng.next();
                let kind = rng.pick(&[T_IN, T_OUT, T_FLUSH, T_GET_ID, r as u32]);
                let r = rng.next();
                let sector = rng.pick(&[0, 1, 15, 16, 17, u64::MAX, r]);
                let hdr = RequestHeader {
                    kind,
                    ioprio: 0,
                    sector,
                };
                s.mem.write_obj(hdr, GuestAddress(0x1000)).unwrap();
                let n = 1 + rng.next() % 6;
                let descs: Vec<RawDescriptor> = (0..n)
                    .map(|i| {
                        let r = rng.next();
                        let addr = rng.pick(&[0x1000, 0x2000, 0x3000, 0xf_fff0, 0x10_0000, r]);
                        let r = rng.next();
                        let len = rng.pick(&[0, 1, 15, 16, 512, 4096, 1 << 20, r as u32]);
                        let flags = (rng.next() % 8) as u16; // NEXT, WRITE, INDIRECT
                        let r = rng.next();
                        let next = rng.pick(&[i as u16 + 1, 0, (r % 16) as u16]);
                        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
                    })
                    .collect();
                let vq = MockSplitQueue::new(&s.mem, 16);
                if vq.add_desc_chains(&descs, 0).is_err() {
                    continue;
                }
                let mut q: Queue = vq.create_queue().unwrap();
                while let Some(chain) = q.pop_descriptor_chain(&s.mem) {
                    // As the device walks it (a loop repeats descriptors).
                    let writable: u64 = chain
                        .clone()
                        .filter(|d| d.is_write_only())
                        .map(|d| u64::from(d.len()))
                        .sum();
                    let used = s.disk.handle(&s.mem, chain);
                    assert!(
                        u64::from(used) <= writable,
                        "used {used} > writable {writable}: {descs:?}"
                    );
                }
                assert_eq!(s.disk.file.metadata().unwrap().len(), 8192);
            }
            if read_only {
                let mut back = vec![0u8; 8192];
                s.disk.file.read_exact_at(&mut back, 0).unwrap();
                assert!(back.iter().all(|&b| b == 0x5a), "a read-only disk changed");
            }
        }
    }

    /// A block device that answered requests is saved while one more waits;
    /// a fresh device opened on the same file and restored over the same
    /// guest memory answers the waiting request and the next ones, and sees
    /// what was written before the save.
    #[test]
    fn a_restored_block_device_carries_on() {
        use crate::devices::virtio::event_loop::test_loop;
        use crate::devices::virtio::persist::{DeviceState, PersistError, queues_from};
        use crate::devices::virtio::test_queue::TestQueue;
        use crate::devices::virtio::{Interrupt, VirtioDevice};
        use vmm_sys_util::eventfd::EventFd;

        let path = std::env::temp_dir().join(format!("hull-blk-restore-{}", std::process::id()));
        std::fs::write(&path, [0u8; 8192]).unwrap();
        let _file = tempfile_path::TempPath(path.clone());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut q = TestQueue::new(&mem, 0);
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let activation = |queue: Queue| Activation {
            mem: mem.clone(),
            queues: vec![queue],
            queue_evts: vec![kick.try_clone().unwrap()],
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            event_loop: test_loop(),
        };
        // Request n: header, 512 data bytes and status at 0x10_0000 + n * 4 KiB,
        // descriptors 3n..3n+2.
        let mut n = 0u16;
        let mut publish = |q: &mut TestQueue, kind: u32, sector: u64, fill: u8| {
            let at = 0x10_0000 + u64::from(n) * 4096;
            let hdr = RequestHeader {
                kind,
                ioprio: 0,
                sector,
            };
            mem.write_obj(hdr, GuestAddress(at)).unwrap();
            mem.write_slice(&[fill; 512], GuestAddress(at + 16))
                .unwrap();
            let data_flags = NEXT | if kind == T_IN { WRITE } else { 0 };
            let d = 3 * n;
            q.store(d, SplitDescriptor::new(at, 16, NEXT, d + 1));
            q.store(d + 1, SplitDescriptor::new(at + 16, 512, data_flags, d + 2));
            q.store(d + 2, SplitDescriptor::new(at + 1024, 1, WRITE, 0));
            q.publish(d);
            kick.write(1).unwrap();
            n += 1;
            at
        };
        let wait_used = |q: &TestQueue, want: u16| {
            for _ in 0..1000 {
                if q.used_idx() == want {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            panic!("the device never returned request {want}");
        };
        let status = |at: u64| mem.read_obj::<u8>(GuestAddress(at + 1024)).unwrap();

        let mut dev = Block::open(&path, false, Some("layer0")).unwrap();
        dev.activate(activation(q.queue()), F_VERSION_1).unwrap();
        let w = publish(&mut q, T_OUT, 1, 7);
        let r = publish(&mut q, T_IN, 0, 0xee);
        wait_used(&q, 2);
        assert_eq!((status(w), status(r)), (S_OK, S_OK));

        let state = dev.save();
        let json = serde_json::to_string(&state).unwrap();
        let waiting = publish(&mut q, T_IN, 1, 0xee);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(q.used_idx(), 2, "a paused device answered a request");
        drop(dev);

        let state: DeviceState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.virtio().queues[0].next_used, 2);
        let queues = queues_from(&state.virtio().queues).unwrap();
        let mut dev = Block::open(&path, false, Some("layer0")).unwrap();
        dev.restore(&state, Some(activation(queues.into_iter().next().unwrap())))
            .unwrap();
        wait_used(&q, 3);
        assert_eq!(status(waiting), S_OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(waiting + 16))
            .unwrap();
        assert_eq!(got, [7u8; 512], "the write before the save is read back");
        let flush = publish(&mut q, T_FLUSH, 0, 0);
        wait_used(&q, 4);
        assert_eq!(status(flush), S_OK);

        // Paused and resumed in place: what waited is answered on resume.
        dev.pause();
        let during = publish(&mut q, T_IN, 1, 0xee);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(q.used_idx(), 4, "a paused device answered a request");
        dev.resume().unwrap();
        wait_used(&q, 5);
        assert_eq!(status(during), S_OK);

        // Another disk (read-only, here) is not taken for this one.
        let mut other = Block::open(&path, true, None).unwrap();
        assert!(matches!(
            other.restore(&state, None),
            Err(PersistError::Mismatch(_))
        ));
    }
}
