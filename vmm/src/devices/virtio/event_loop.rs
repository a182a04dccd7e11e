//! The one event-loop thread that serves every virtio device: devices
//! register file descriptors (queue eventfds, sockets) with a handler; the
//! loop calls the handler when one is ready.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Something that reacts to readiness of the fds it registered.
pub trait EventHandler: Send {
    /// `fd` is ready with `events`.
    fn handle(&mut self, fd: RawFd, events: EventSet);
}

type Shared = Arc<Mutex<dyn EventHandler>>;

/// A handle to the event loop; clones share it.
#[derive(Clone)]
pub struct EventLoop {
    epoll: Arc<Epoll>,
    handlers: Arc<Mutex<HashMap<u64, (RawFd, Shared)>>>,
    next: Arc<AtomicU64>,
}

impl EventLoop {
    /// Creates the loop and starts its thread.
    pub fn start() -> std::io::Result<EventLoop> {
        let el = EventLoop {
            epoll: Arc::new(Epoll::new()?),
            handlers: Arc::new(Mutex::new(HashMap::new())),
            next: Arc::new(AtomicU64::new(1)),
        };
        let runner = el.clone();
        std::thread::Builder::new()
            .name("virtio".into())
            .spawn(move || runner.run())?;
        Ok(el)
    }

    /// Watches `fd` for `events`, calling `handler` when ready. Returns a
    /// token for [`EventLoop::remove`].
    pub fn add(&self, fd: RawFd, events: EventSet, handler: Shared) -> std::io::Result<u64> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(token, (fd, handler));
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
        {
            self.lock().remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    /// Changes the events watched for `token`.
    pub fn modify(&self, token: u64, events: EventSet) -> std::io::Result<()> {
        let fd = self.lock().get(&token).map(|(fd, _)| *fd);
        match fd {
            Some(fd) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
            }
            None => Ok(()),
        }
    }

    /// Stops watching the fd of `token` (before it is closed).
    pub fn remove(&self, token: u64) {
        if let Some((fd, _)) = self.lock().remove(&token) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (RawFd, Shared)>> {
        self.handlers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio event loop: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let entry = self.lock().get(&ev.data()).map(|(fd, h)| (*fd, h.clone()));
                if let Some((fd, handler)) = entry {
                    handler
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .handle(fd, ev.event_set());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    struct Count(Arc<AtomicU64>, EventFd);
    impl EventHandler for Count {
        fn handle(&mut self, _fd: RawFd, _e: EventSet) {
            let _ = self.1.read();
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn handlers_run_when_their_fd_is_ready() {
        let el = EventLoop::start().unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = Arc::new(Mutex::new(Count(hits.clone(), evt.try_clone().unwrap())));
        el.add(evt.as_raw_fd(), EventSet::IN, h).unwrap();
        evt.write(1).unwrap();
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) > 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("handler never ran");
    }
}
