//! The event-loop thread that serves virtio devices: devices register file
//! descriptors (queue eventfds, sockets) with a handler; the loop calls the
//! handler when one is ready, with an [`EventOps`] through which it adds,
//! changes and removes its own fds (a handler never needs a reference to
//! itself).
//!
//! Every device of a VM shares one loop, so no handler may block. A device
//! whose work blocks (a FUSE server) starts a loop of its own with
//! [`EventLoop::start_sibling`] at activation: same shape, its own thread,
//! the same panic policy.
//!
//! A panic in a handler stops its loop and is reported once through the
//! hook given to [`EventLoop::start`] (the VMM turns it into the end of the
//! VM): a device that stopped serving must not leave the guest waiting
//! forever.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::seccomp::ThreadKind;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Something that reacts to readiness of the fds it registered.
pub trait EventHandler: Send {
    /// `fd` is ready with `events`; `ops` registers further fds for this
    /// same handler.
    fn handle(&mut self, ops: &mut EventOps, fd: RawFd, events: EventSet);
}

/// A handler as the loop holds it.
pub type Shared = Arc<Mutex<dyn EventHandler>>;

/// Called with a message when a handler panicked and its loop stopped.
pub type PanicHook = Arc<dyn Fn(String) + Send + Sync>;

/// A handle to the event loop; clones share it.
#[derive(Clone)]
pub struct EventLoop {
    epoll: Arc<Epoll>,
    handlers: Arc<Mutex<HashMap<u64, (RawFd, Shared)>>>,
    next: Arc<AtomicU64>,
    on_panic: PanicHook,
}

/// What a handler may do to the loop's fds: add fds served by itself, change
/// what they are watched for, remove them.
pub struct EventOps {
    event_loop: EventLoop,
    handler: Shared,
}

impl EventOps {
    /// Watches `fd` for `events`, calling this handler when ready.
    pub fn add(&mut self, fd: RawFd, events: EventSet) -> std::io::Result<u64> {
        self.event_loop.add(fd, events, self.handler.clone())
    }

    /// Changes the events watched for `token`.
    pub fn modify(&mut self, token: u64, events: EventSet) -> std::io::Result<()> {
        self.event_loop.modify(token, events)
    }

    /// Stops watching the fd of `token` (before it is closed).
    pub fn remove(&mut self, token: u64) {
        self.event_loop.remove(token)
    }
}

impl EventLoop {
    /// Creates the loop and starts its thread; `on_panic` hears of a
    /// handler that panicked ("device thread panicked: ...").
    pub fn start(on_panic: impl Fn(String) + Send + Sync + 'static) -> std::io::Result<EventLoop> {
        Self::spawn("virtio", Arc::new(on_panic), ThreadKind::Device)
    }

    /// Another loop on a thread of its own, named `name`, whose panics go
    /// to the same hook: for a device whose handlers block.
    pub fn start_sibling(&self, name: &str) -> std::io::Result<EventLoop> {
        self.start_sibling_of_kind(name, ThreadKind::Device)
    }

    /// [`EventLoop::start_sibling`] under the seccomp filter of `kind`
    /// (the virtio-fs server's thread makes file system calls no other
    /// device thread may).
    pub fn start_sibling_of_kind(
        &self,
        name: &str,
        kind: ThreadKind,
    ) -> std::io::Result<EventLoop> {
        Self::spawn(name, self.on_panic.clone(), kind)
    }

    fn spawn(name: &str, on_panic: PanicHook, kind: ThreadKind) -> std::io::Result<EventLoop> {
        let el = EventLoop {
            epoll: Arc::new(Epoll::new()?),
            handlers: Arc::new(Mutex::new(HashMap::new())),
            next: Arc::new(AtomicU64::new(1)),
            on_panic,
        };
        let runner = el.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let hook = runner.on_panic.clone();
                // The device thread's seccomp filter, before it serves any
                // guest request (a no-op unless hull-vmm enabled them).
                if let Err(e) = crate::seccomp::enter(kind) {
                    hook(crate::error::chain(&e));
                    return;
                }
                if let Err(msg) = runner.run() {
                    log::error!("{msg}");
                    hook(msg);
                }
            })?;
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

    /// The ops `handler` would get from the loop, for work on its fds done
    /// outside the loop (activation, reset, pause).
    pub fn ops(&self, handler: Shared) -> EventOps {
        EventOps {
            event_loop: self.clone(),
            handler,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (RawFd, Shared)>> {
        self.handlers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves events until epoll fails (Ok) or a handler panics (Err, with
    /// the message for the VMM).
    fn run(self) -> Result<(), String> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio event loop: epoll_wait: {e}");
                    return Ok(());
                }
            };
            for ev in &events[..n] {
                let entry = self.lock().get(&ev.data()).map(|(fd, h)| (*fd, h.clone()));
                let Some((fd, handler)) = entry else {
                    continue;
                };
                let mut ops = self.ops(handler.clone());
                // The handler's state may be half-updated after a panic; it
                // is never called again (the loop ends here).
                let ran = catch_unwind(AssertUnwindSafe(|| {
                    handler.lock().unwrap_or_else(|p| p.into_inner()).handle(
                        &mut ops,
                        fd,
                        ev.event_set(),
                    )
                }));
                if let Err(payload) = ran {
                    return Err(format!(
                        "device thread panicked: {}",
                        panic_message(payload.as_ref())
                    ));
                }
            }
        }
    }
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// A loop for unit tests: a handler panic fails the test run loudly.
#[cfg(any(test, fuzzing))]
pub(crate) fn test_loop() -> EventLoop {
    EventLoop::start(|msg| {
        eprintln!("{msg}");
        std::process::abort();
    })
    .expect("starting an event loop")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;
    use std::time::Duration;
    use vmm_sys_util::eventfd::EventFd;

    struct Count(Arc<AtomicU64>, EventFd);
    impl EventHandler for Count {
        fn handle(&mut self, _ops: &mut EventOps, _fd: RawFd, _e: EventSet) {
            let _ = self.1.read();
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..400 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{what}");
    }

    #[test]
    fn handlers_run_when_their_fd_is_ready() {
        let el = test_loop();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let h = Arc::new(Mutex::new(Count(hits.clone(), evt.try_clone().unwrap())));
        el.add(evt.as_raw_fd(), EventSet::IN, h).unwrap();
        evt.write(1).unwrap();
        wait_for("handler never ran", || hits.load(Ordering::SeqCst) > 0);
    }

    /// Adds a second eventfd through its ops on the first event, and
    /// removes it again on the first event of the second one.
    struct Grows {
        first: EventFd,
        second: EventFd,
        second_token: Option<u64>,
        second_hits: Arc<AtomicU64>,
    }
    impl EventHandler for Grows {
        fn handle(&mut self, ops: &mut EventOps, fd: RawFd, _e: EventSet) {
            if fd == self.first.as_raw_fd() {
                let _ = self.first.read();
                if self.second_token.is_none() {
                    self.second_token = ops.add(self.second.as_raw_fd(), EventSet::IN).ok();
                }
            } else if fd == self.second.as_raw_fd() {
                let _ = self.second.read();
                self.second_hits.fetch_add(1, Ordering::SeqCst);
                if let Some(t) = self.second_token.take() {
                    ops.remove(t);
                }
            }
        }
    }

    #[test]
    fn a_handler_adds_and_removes_its_own_fds_through_its_ops() {
        let el = test_loop();
        let first = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let second = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let grows = Grows {
            first: first.try_clone().unwrap(),
            second: second.try_clone().unwrap(),
            second_token: None,
            second_hits: hits.clone(),
        };
        // The handler knows its fds by its own numbers (clones).
        let first_fd = grows.first.as_raw_fd();
        let h = Arc::new(Mutex::new(grows));
        second.write(1).unwrap(); // not watched yet: no effect
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        el.add(first_fd, EventSet::IN, h).unwrap();
        first.write(1).unwrap();
        wait_for("the fd added through ops never fired", || {
            hits.load(Ordering::SeqCst) == 1
        });
        second.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "removed fd still served");
    }

    struct Panics(EventFd);
    impl EventHandler for Panics {
        fn handle(&mut self, _ops: &mut EventOps, _fd: RawFd, _e: EventSet) {
            let _ = self.0.read();
            panic!("queue 3 is on fire");
        }
    }

    /// A handler panics on the shared loop, or on a device's own loop: the
    /// exit channel the VMM waits on hears of it.
    #[test]
    fn a_panicking_handler_is_reported_as_the_end_of_the_vm() {
        for sibling in [false, true] {
            let (tx, rx) = mpsc::channel::<crate::VmExit>();
            let shared = EventLoop::start(move |msg| {
                let _ = tx.send(crate::VmExit::Error(msg));
            })
            .unwrap();
            let el = if sibling {
                shared.start_sibling("virtio-fs").unwrap()
            } else {
                shared
            };
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let h = Arc::new(Mutex::new(Panics(evt.try_clone().unwrap())));
            el.add(evt.as_raw_fd(), EventSet::IN, h).unwrap();
            evt.write(1).unwrap();
            let exit = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("the panic never reached the exit channel");
            assert_eq!(
                exit,
                crate::VmExit::Error("device thread panicked: queue 3 is on fire".into())
            );
        }
    }
}
