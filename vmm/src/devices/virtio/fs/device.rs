//! The virtio-fs device: its configuration space (tag, one request queue),
//! and both queues served on a device thread of its own by the FUSE server.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap, Permissions};

use super::dax::DaxWindow;
use super::protocol as p;
use super::server::{Answer, GuestData, Server, ServerError};
use super::stats::Stats;
use super::{TAG_MAX, proc_self_fd};
use crate::config::FsCache;
use crate::devices::virtio::event_loop::EventLoop;
use crate::devices::virtio::iov::{self, GuestIovecs, segments};
use crate::devices::virtio::persist::{DeviceState, PersistError, QueueSnapshot, VirtioState};
use crate::devices::virtio::queue_worker::{self, Chain, RequestHandler, Served};
use crate::devices::virtio::{
    ActivateError, Activation, F_EVENT_IDX, F_VERSION_1, LogLimit, TYPE_FS, VirtioDevice,
};

/// Largest request copied out of the guest: the longest has two names or
/// a name and a symlink's target (a READ's or WRITE's data is never
/// copied: see [`ChainData`]).
pub const MAX_REQUEST: usize = p::IN_HEADER_LEN + 64 + 2 * (p::PATH_MAX + 1);

/// The headers of a READ or WRITE (fuse_in_header, fuse_read_in or
/// fuse_write_in, both 40 bytes): where a WRITE's data starts.
const IO_HEADER_LEN: usize = p::IN_HEADER_LEN + 40;

/// A READ's or WRITE's data in the chain's buffers: a WRITE's after its
/// headers in the readable part, a READ's after the reply's header in the
/// writable part. The chain was checked to lie in guest memory (its
/// Reader and Writer exist).
struct ChainData<'a, 'm> {
    mem: &'m GuestMemoryMmap,
    chain: &'a Chain<'m>,
    readable: usize,
    room: usize,
}

impl ChainData<'_, '_> {
    fn transfer(
        &self,
        fd: BorrowedFd<'_>,
        off: u64,
        segs: &[(GuestAddress, usize)],
        write: bool,
    ) -> Result<usize, i32> {
        // Writing the file reads guest memory, and reading it writes there.
        let access = if write {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let mut iovs = GuestIovecs::new(self.mem, segs, access).map_err(|_| libc::EFAULT)?;
        iov::transfer(fd.as_raw_fd(), &mut iovs, off, write).map_err(errno)
    }
}

impl GuestData for ChainData<'_, '_> {
    fn write_to(&mut self, fd: BorrowedFd<'_>, off: u64, len: usize) -> Result<usize, i32> {
        if len > self.readable.saturating_sub(IO_HEADER_LEN) {
            return Err(libc::EINVAL);
        }
        let segs = segments(self.chain, false, IO_HEADER_LEN, len);
        self.transfer(fd, off, &segs, true)
    }

    fn read_from(&mut self, fd: BorrowedFd<'_>, off: u64, len: usize) -> Result<usize, i32> {
        let len = len.min(self.room.saturating_sub(p::OUT_HEADER_LEN));
        let segs = segments(self.chain, true, p::OUT_HEADER_LEN, len);
        self.transfer(fd, off, &segs, false)
    }
}

const QUEUE_SIZES: [u16; 2] = [256, 1024];

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?}: 1 to {TAG_MAX} bytes, no ',', '=' or space")]
    Tag(String),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Dax(#[from] super::dax::DaxError),
    #[error("starting the virtio-fs thread")]
    Thread(#[source] std::io::Error),
}

/// What a fs device saves: where its queues are. Only empty slots are
/// snapshotted (a template's; see the module): a restore gives the slot
/// its directory and a fresh server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsState {
    pub virtio: VirtioState,
    pub tag: String,
    /// The DAX window's guest-physical address and length (0, 0: none).
    /// The guest mapped it when it probed the device, so a restore must
    /// give the device the same one; no file is mapped in it at a
    /// snapshot (a snapshotted device has no directory).
    pub dax_window: (u64, u64),
}

pub struct Fs {
    tag: String,
    path: PathBuf,
    /// None: an empty slot (every request is refused).
    server: Option<Arc<Mutex<Server>>>,
    /// The DAX cache window (shared memory region 0), if any.
    window: Option<Arc<DaxWindow>>,
    acked_features: u64,
    served: Vec<Served<FsQueue>>,
    /// The device's own loop (a guest that resets the device again and
    /// again gets no new thread).
    own: EventLoop,
}

/// A valid tag: what the guest mounts by.
pub fn valid_tag(tag: &str) -> bool {
    (1..=TAG_MAX).contains(&tag.len())
        && !tag.contains([',', '=', '\0'])
        && !tag.chars().any(char::is_whitespace)
}

impl Fs {
    /// A device sharing `path` as `tag`; `read_only` makes the server refuse
    /// every change with EROFS. Its thread starts here, beside `shared` (the
    /// VM's device loop), before the guest runs: the vCPU thread that
    /// activates the device may not start threads.
    pub fn new(tag: &str, path: &Path, read_only: bool, shared: &EventLoop) -> Result<Fs, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::Tag(tag.into()));
        }
        let server = Server::open(path, read_only, proc_self_fd())?;
        raise_open_files();
        let mut fs = Fs::empty(tag, shared)?;
        fs.path = path.to_path_buf();
        fs.server = Some(Arc::new(Mutex::new(server)));
        Ok(fs)
    }

    /// An empty slot with `tag` (a template's): the guest may probe it,
    /// and a request gets ENODEV; a restore gives the slot a directory
    /// (a device made with [`Fs::new`] and the same tag).
    pub fn empty(tag: &str, shared: &EventLoop) -> Result<Fs, FsError> {
        if !valid_tag(tag) {
            return Err(FsError::Tag(tag.into()));
        }
        let own = shared
            .start_sibling_of_kind("virtio-fs", crate::seccomp::ThreadKind::Fs)
            .map_err(FsError::Thread)?;
        Ok(Fs {
            tag: tag.into(),
            path: PathBuf::new(),
            server: None,
            window: None,
            acked_features: 0,
            served: Vec::new(),
            own,
        })
    }

    /// Sets whether the guest keeps the share's file data in its page
    /// cache (see [`FsCache`]); an empty slot has no server to set.
    pub fn with_cache(self, cache: FsCache) -> Fs {
        if let Some(server) = &self.server {
            server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_cache(cache);
        }
        self
    }

    /// Gives the device a DAX window: the guest finds it as shared memory
    /// region 0, and the server maps files into it.
    pub fn with_window(mut self, window: Arc<DaxWindow>) -> Fs {
        if let Some(server) = &self.server {
            server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set_window(window.clone());
        }
        self.window = Some(window);
        self
    }

    /// The DAX window's guest-physical address and length (0, 0: none).
    fn window_region(&self) -> (u64, u64) {
        self.window.as_ref().map_or((0, 0), |w| w.region())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handler that serves one of its queues (for tests and fuzzing).
    pub(crate) fn handler(&self) -> FsQueue {
        FsQueue {
            server: self.server.clone(),
            errors: LogLimit::default(),
            stats: Stats::new(),
        }
    }
}

/// Raises this process's soft limit on open files toward its hard limit,
/// so that a server's table of inodes (one fd each) fits.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads a valid rlimit; raising the soft limit up
        // to the hard one needs no privilege.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

pub(crate) struct FsQueue {
    server: Option<Arc<Mutex<Server>>>,
    errors: LogLimit,
    stats: Stats,
}

impl RequestHandler for FsQueue {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let (mut reader, mut writer) = match chain
            .clone()
            .reader(mem)
            .and_then(|r| chain.clone().writer(mem).map(|w| (r, w)))
        {
            Ok(rw) => rw,
            Err(e) => {
                if self.errors.allow() {
                    log::warn!("virtio-fs: bad descriptor chain: {e}");
                }
                return 0;
            }
        };
        let readable = reader.available_bytes();
        // The header and a READ's or WRITE's own header first: their data
        // stays in guest memory (GuestData), anything else is read whole.
        let mut req = vec![0u8; readable.min(IO_HEADER_LEN)];
        if reader.read_exact(&mut req).is_err() {
            return 0;
        }
        let opcode = req
            .get(4..8)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        let io = opcode == p::READ || opcode == p::WRITE;
        if !io {
            let rest = readable.min(MAX_REQUEST) - req.len();
            let at = req.len();
            req.resize(at + rest, 0);
            if reader.read_exact(&mut req[at..]).is_err() {
                return 0;
            }
        }
        let room = writer.available_bytes();
        let mut data = ChainData {
            mem,
            chain: &chain,
            readable,
            room,
        };
        let start = self.stats.start();
        let answer = match &self.server {
            Some(server) => server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle_with(&req, room, io.then_some(&mut data as &mut dyn GuestData)),
            // An empty slot (a template's, before a restore gives it a
            // directory) answers every request with ENODEV.
            None => match super::protocol::parse_header(&req) {
                Some((h, _)) => Answer::Reply(super::protocol::reply(h.unique, libc::ENODEV, &[])),
                None => Answer::None,
            },
        };
        let written = match answer {
            Answer::Reply(r) if r.len() <= room => match writer.write_all(&r) {
                Ok(()) => r.len() as u32,
                Err(_) => 0,
            },
            // The data is in place after the header (GuestData::read_from).
            Answer::ReplyAfterData(h, n) if h.len() + n <= room => match writer.write_all(&h) {
                Ok(()) => (h.len() + n) as u32,
                Err(_) => 0,
            },
            _ => 0,
        };
        self.stats.done(opcode, start);
        written
    }

    fn woken(&mut self) {
        self.stats.wakeup();
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }
    fn features(&self) -> u64 {
        // EVENT_IDX: the guest kicks only when the device asked to hear of
        // new requests, and takes an interrupt only once it has seen the
        // used ones before it (readahead keeps several READs in flight).
        F_VERSION_1 | F_EVENT_IDX
    }
    fn shm_region(&self, id: u32) -> Option<(u64, u64)> {
        // Region 0 is the cache (VIRTIO_FS_SHMCAP_ID_CACHE).
        self.window.as_ref().filter(|_| id == 0).map(|w| w.region())
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; TAG_MAX + 4];
        config[..self.tag.len()].copy_from_slice(self.tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        crate::devices::virtio::read_config_bytes(&config, offset, data);
    }
    fn activate(&mut self, mut a: Activation, features: u64) -> Result<(), ActivateError> {
        if a.queues.len() != 2 || a.queue_evts.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: a.queues.len(),
                want: 2,
            });
        }
        // Its own thread: FUSE requests block on the host's disk.
        let own = self.own.clone();
        self.served.clear();
        for (queue, evt) in a.queues.drain(..).zip(a.queue_evts.drain(..)) {
            let mut queue: Queue = queue;
            queue.set_event_idx(features & F_EVENT_IDX != 0);
            let served = queue_worker::spawn(
                &own,
                a.mem.clone(),
                queue,
                evt,
                a.interrupt.clone(),
                self.handler(),
            )?;
            self.served.push(served);
        }
        self.acked_features = features;
        Ok(())
    }
    fn reset(&mut self) {
        self.served.clear();
        // A reset driver forgets its mappings; so does the window.
        if let Some(w) = &self.window {
            w.clear();
        }
    }
    fn pause(&mut self) {
        for s in &mut self.served {
            s.pause();
        }
    }
    fn resume(&mut self) -> Result<(), ActivateError> {
        for s in &mut self.served {
            s.resume()?;
        }
        Ok(())
    }
    fn save(&mut self) -> DeviceState {
        self.pause();
        let queues: Vec<QueueSnapshot> = self.served.iter().map(Served::queue).collect();
        DeviceState::Fs(FsState {
            virtio: VirtioState::new(self.acked_features, queues),
            tag: self.tag.clone(),
            dax_window: self.window_region(),
        })
    }
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError> {
        let DeviceState::Fs(s) = state else {
            return Err(PersistError::WrongDevice {
                found: state.kind(),
                want: "fs",
            });
        };
        s.virtio.check_version()?;
        if s.tag != self.tag {
            return Err(PersistError::Mismatch(format!(
                "the fs slot's tag was {:?}, it is {:?}",
                s.tag, self.tag
            )));
        }
        if s.dax_window != self.window_region() {
            return Err(PersistError::Mismatch(format!(
                "the fs slot's DAX window was {:x?} (address, length), it is {:x?}",
                s.dax_window,
                self.window_region()
            )));
        }
        if !s.virtio.queues.is_empty() && s.virtio.queues.len() != 2 {
            return Err(PersistError::Mismatch(format!(
                "{} saved fs queues, the device has 2",
                s.virtio.queues.len()
            )));
        }
        match a {
            Some(a) if s.virtio.activated() => self
                .activate(a, s.virtio.acked_features)
                .map_err(PersistError::Activate),
            _ => Ok(()),
        }
    }
}
