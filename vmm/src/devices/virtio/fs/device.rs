//! The virtio-fs device: its configuration space (tag, one request queue),
//! and both queues served on a device thread of its own by the FUSE server.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::server::{Answer, MAX_IO, Server, ServerError};
use super::{TAG_MAX, proc_self_fd};
use crate::devices::virtio::event_loop::EventLoop;
use crate::devices::virtio::persist::{DeviceState, PersistError, QueueSnapshot, VirtioState};
use crate::devices::virtio::queue_worker::{self, Chain, RequestHandler, Served};
use crate::devices::virtio::{
    ActivateError, Activation, F_VERSION_1, LogLimit, TYPE_FS, VirtioDevice,
};

/// Largest request read from the guest: a WRITE of [`MAX_IO`] with its
/// headers and some room.
pub const MAX_REQUEST: usize = MAX_IO + 4096;

const QUEUE_SIZES: [u16; 2] = [256, 1024];

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?}: 1 to {TAG_MAX} bytes, no ',', '=' or space")]
    Tag(String),
    #[error(transparent)]
    Server(#[from] ServerError),
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
}

pub struct Fs {
    tag: String,
    path: PathBuf,
    /// None: an empty slot (every request is refused).
    server: Option<Arc<Mutex<Server>>>,
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
            acked_features: 0,
            served: Vec::new(),
            own,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handler that serves one of its queues (for tests and fuzzing).
    pub(crate) fn handler(&self) -> FsQueue {
        FsQueue {
            server: self.server.clone(),
            errors: LogLimit::default(),
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
}

impl RequestHandler for FsQueue {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let (mut reader, mut writer) = match chain
            .clone()
            .reader(mem)
            .and_then(|r| chain.writer(mem).map(|w| (r, w)))
        {
            Ok(rw) => rw,
            Err(e) => {
                if self.errors.allow() {
                    log::warn!("virtio-fs: bad descriptor chain: {e}");
                }
                return 0;
            }
        };
        let n = reader.available_bytes().min(MAX_REQUEST);
        let mut req = vec![0u8; n];
        if reader.read_exact(&mut req).is_err() {
            return 0;
        }
        let room = writer.available_bytes();
        let answer = match &self.server {
            Some(server) => server
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handle(&req, room),
            None => match super::protocol::parse_header(&req) {
                Some((h, _)) => Answer::Reply(super::protocol::reply(h.unique, libc::ENODEV, &[])),
                None => Answer::None,
            },
        };
        match answer {
            Answer::Reply(r) if r.len() <= room => match writer.write_all(&r) {
                Ok(()) => r.len() as u32,
                Err(_) => 0,
            },
            _ => 0,
        }
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
        F_VERSION_1
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
            let queue: Queue = queue;
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
