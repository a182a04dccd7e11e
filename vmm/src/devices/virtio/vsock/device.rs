//! The vsock device as the transport sees it: configuration, activation
//! (the muxer starts serving on the event loop), reset, pause and save.

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use super::super::event_loop::EventLoop;
use super::super::persist::{DeviceState, PersistError, QueueSnapshot, VirtioState};
use super::super::{
    ActivateError, Activation, F_EVENT_IDX, F_VERSION_1, TYPE_VSOCK, VirtioDevice,
    read_config_bytes,
};
use super::VsockError;
use super::muxer::{Muxer, Queues};
use super::persist::VsockState;

const QUEUE_SIZE: u16 = 256;

/// The device as the transport sees it.
pub struct Vsock {
    pub(super) cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    config: [u8; 8],
    acked_features: u64,
    active: Option<Active>,
}

/// A device serving its queues.
pub(super) struct Active {
    pub(super) muxer: Arc<Mutex<Muxer>>,
    event_loop: EventLoop,
    /// The loop tokens of the queue eventfds and the listener.
    tokens: Vec<u64>,
}

impl Active {
    /// Watches the queue eventfds and the listener.
    fn watch(&mut self, fds: [RawFd; 4]) -> Result<(), ActivateError> {
        for fd in fds {
            let t = self
                .event_loop
                .add(fd, EventSet::IN, self.muxer.clone())
                .map_err(ActivateError::EventLoop)?;
            self.tokens.push(t);
        }
        Ok(())
    }

    /// Leaves the event loop: the muxer's fds are no longer watched, its
    /// host connections are closed, and it touches guest memory no more.
    fn stop(&mut self) {
        for t in self.tokens.drain(..) {
            self.event_loop.remove(t);
        }
        let mut ops = self.event_loop.ops(self.muxer.clone());
        let mut m = lock(&self.muxer);
        m.close_all(&mut ops);
        m.paused = true;
    }

    /// Stops serving but keeps the host connections, unwatched, for
    /// [`Active::resume`].
    fn pause(&mut self) {
        for t in self.tokens.drain(..) {
            self.event_loop.remove(t);
        }
        let mut ops = self.event_loop.ops(self.muxer.clone());
        lock(&self.muxer).pause(&mut ops);
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        if !self.tokens.is_empty() {
            return Ok(());
        }
        let mut ops = self.event_loop.ops(self.muxer.clone());
        let fds = lock(&self.muxer).base_fds();
        self.watch(fds)?;
        lock(&self.muxer).resume(&mut ops);
        Ok(())
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Vsock {
    /// Listens on `uds` (replacing a stale socket file) for host connections.
    pub fn new(cid: u64, uds: &Path) -> Result<Vsock, VsockError> {
        let listen_err = |error| VsockError::Listen {
            path: uds.to_path_buf(),
            error,
        };
        match std::fs::remove_file(uds) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(uds).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Vsock {
            cid,
            uds: uds.to_path_buf(),
            listener,
            config: cid.to_le_bytes(),
            acked_features: 0,
            active: None,
        })
    }

    /// Runs the active device's handler for `fd` now, on this thread (the
    /// fuzz targets drive it without waiting for the event loop).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn handle_now(&self, fd: std::os::fd::RawFd) {
        use super::super::event_loop::EventHandler;
        if let Some(a) = &self.active {
            let mut ops = a.event_loop.ops(a.muxer.clone());
            lock(&a.muxer).handle(&mut ops, fd, EventSet::IN);
        }
    }

    /// The device's muxer and loop registrations while it serves.
    pub(super) fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, a: Activation, features: u64) -> Result<(), ActivateError> {
        let got = a.queues.len();
        let wrong = || ActivateError::QueueCount { got, want: 3 };
        if got != 3 || a.queue_evts.len() != 3 {
            return Err(wrong());
        }
        let listener = self
            .listener
            .try_clone()
            .map_err(|error| ActivateError::Clone {
                what: "the vsock listener",
                error,
            })?;
        let mut queues = a.queues.into_iter();
        let mut evts = a.queue_evts.into_iter();
        let (Some(mut rx), Some(mut tx), Some(mut ev)) =
            (queues.next(), queues.next(), queues.next())
        else {
            return Err(wrong());
        };
        let (Some(rx_evt), Some(tx_evt), Some(ev_evt)) = (evts.next(), evts.next(), evts.next())
        else {
            return Err(wrong());
        };
        let event_idx = features & F_EVENT_IDX != 0;
        for q in [&mut rx, &mut tx, &mut ev] {
            virtio_queue::QueueT::set_event_idx(q, event_idx);
        }
        let q = Queues {
            rx,
            tx,
            ev,
            rx_evt,
            tx_evt,
            ev_evt,
        };
        let muxer = Muxer::new(self.cid, self.uds.clone(), a.mem, q, listener, a.interrupt);
        let fds = muxer.base_fds();
        let muxer = Arc::new(Mutex::new(muxer));
        let mut active = Active {
            muxer,
            event_loop: a.event_loop,
            tokens: Vec::new(),
        };
        if let Err(e) = active.watch(fds) {
            active.stop();
            return Err(e);
        }
        self.active = Some(active);
        self.acked_features = features;
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut a) = self.active.take() {
            a.stop();
        }
    }
    fn pause(&mut self) {
        if let Some(a) = &mut self.active {
            a.pause();
        }
    }
    fn resume(&mut self) -> Result<(), ActivateError> {
        match &mut self.active {
            Some(a) => a.resume(),
            None => Ok(()),
        }
    }
    fn save(&mut self) -> DeviceState {
        let connections = self
            .active
            .as_ref()
            .map_or(0, |a| lock(&a.muxer).connection_count());
        self.pause();
        let queues = match &self.active {
            Some(a) => {
                let m = lock(&a.muxer);
                [&m.q.rx, &m.q.tx, &m.q.ev]
                    .into_iter()
                    .map(QueueSnapshot::of)
                    .collect()
            }
            None => Vec::new(),
        };
        DeviceState::Vsock(VsockState {
            virtio: VirtioState::new(self.acked_features, queues),
            cid: self.cid,
            connections,
        })
    }
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError> {
        self.restore_state(state, a)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
    }
}
