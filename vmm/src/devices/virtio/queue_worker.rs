//! The common shape of a queue-serving device: wait for the queue's
//! eventfd, pop every available chain, let the device answer it, return it
//! used, and interrupt the guest when it wants to know. The device keeps a
//! [`Served`] handle to the worker, so it can pause it and read its queue
//! back for a snapshot.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{EventHandler, EventLoop, EventOps};
use super::persist::{QueueSnapshot, VirtioState};
use super::{ActivateError, Activation, F_EVENT_IDX, Interrupt, LogLimit, Rounds};

/// A descriptor chain as the device sees it.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Answers one request; returns the number of bytes written to the guest.
pub trait RequestHandler: Send + 'static {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32;

    /// The queue's notification arrived; requests follow (a device that
    /// counts where its time goes hears of it).
    fn woken(&mut self) {}
}

struct Worker<H> {
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    interrupt: Interrupt,
    handler: H,
    errors: LogLimit,
    /// Paused for a snapshot: guest memory and the queue are left alone.
    paused: bool,
}

impl<H: RequestHandler> Worker<H> {
    fn process(&mut self) {
        if self.paused {
            return;
        }
        let mem = &self.mem;
        let mut used_any = false;
        let mut rounds = Rounds::default();
        loop {
            let mut popped = false;
            while let Some(chain) = self.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let len = self.handler.handle(mem, chain);
                if let Err(e) = self.queue.add_used(mem, head, len) {
                    if self.errors.allow() {
                        log::warn!("virtio: returning a used buffer: {e}");
                    }
                }
                popped = true;
            }
            used_any |= popped;
            if !rounds.again(&mut self.queue, mem, popped, &mut self.errors) {
                break;
            }
        }
        if used_any && self.queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used();
        }
    }
}

impl<H: RequestHandler> EventHandler for Worker<H> {
    fn handle(&mut self, _ops: &mut EventOps, _fd: RawFd, _events: EventSet) {
        let _ = self.evt.read();
        self.handler.woken();
        self.process();
    }
}

/// A queue being served on an event loop, as its device holds it.
pub struct Served<H> {
    worker: Arc<Mutex<Worker<H>>>,
    event_loop: EventLoop,
    token: Option<u64>,
}

impl<H: RequestHandler> Served<H> {
    /// Stops serving: once this returns the worker touches neither guest
    /// memory nor the queue (a call already running has finished).
    pub fn pause(&mut self) {
        if let Some(t) = self.token.take() {
            self.event_loop.remove(t);
        }
        lock(&self.worker).paused = true;
    }

    /// Serves again after [`Served::pause`], starting with what the guest
    /// queued meanwhile.
    pub fn resume(&mut self) -> Result<(), ActivateError> {
        if self.token.is_some() {
            return Ok(());
        }
        let mut w = lock(&self.worker);
        w.paused = false;
        let fd = w.evt.as_raw_fd();
        drop(w);
        let token = self
            .event_loop
            .add(fd, EventSet::IN, self.worker.clone())
            .map_err(ActivateError::EventLoop)?;
        self.token = Some(token);
        lock(&self.worker).process();
        Ok(())
    }

    /// The queue where the device is now.
    pub fn queue(&self) -> QueueSnapshot {
        QueueSnapshot::of(&lock(&self.worker).queue)
    }
}

impl<H> Drop for Served<H> {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            self.event_loop.remove(t);
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `queue` with `handler` on the event loop.
pub fn spawn<H: RequestHandler>(
    event_loop: &EventLoop,
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    interrupt: Interrupt,
    handler: H,
) -> Result<Served<H>, ActivateError> {
    let fd = evt.as_raw_fd();
    let worker = Worker {
        mem,
        queue,
        evt,
        interrupt,
        handler,
        errors: LogLimit::default(),
        paused: false,
    };
    let worker = Arc::new(Mutex::new(worker));
    let token = event_loop
        .add(fd, EventSet::IN, worker.clone())
        .map_err(ActivateError::EventLoop)?;
    // Buffers the driver queued before activation (or before a snapshot).
    lock(&worker).process();
    Ok(Served {
        worker,
        event_loop: event_loop.clone(),
        token: Some(token),
    })
}

/// A device with one queue, served by one handler once the driver is ready
/// (block, rng): what the device's activate, reset, pause, resume and save
/// do with that queue.
pub struct SingleQueue<H> {
    acked_features: u64,
    served: Option<Served<H>>,
}

impl<H> Default for SingleQueue<H> {
    fn default() -> Self {
        SingleQueue {
            acked_features: 0,
            served: None,
        }
    }
}

impl<H: RequestHandler> SingleQueue<H> {
    /// The driver's one queue (with event index as negotiated), from now on
    /// served by what `handler` makes.
    pub fn serve(
        &mut self,
        mut a: Activation,
        features: u64,
        handler: impl FnOnce() -> Result<H, ActivateError>,
    ) -> Result<(), ActivateError> {
        if a.queues.len() != 1 || a.queue_evts.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: a.queues.len(),
                want: 1,
            });
        }
        let mut queue = a.queues.remove(0);
        queue.set_event_idx(features & F_EVENT_IDX != 0);
        let evt = a.queue_evts.remove(0);
        let served = spawn(&a.event_loop, a.mem, queue, evt, a.interrupt, handler()?)?;
        self.served = Some(served);
        self.acked_features = features;
        Ok(())
    }

    /// Stops serving (a driver reset).
    pub fn stop(&mut self) {
        self.served = None;
    }

    pub fn pause(&mut self) {
        if let Some(s) = &mut self.served {
            s.pause();
        }
    }

    pub fn resume(&mut self) -> Result<(), ActivateError> {
        match &mut self.served {
            Some(s) => s.resume(),
            None => Ok(()),
        }
    }

    /// Pauses, and says where the queue is.
    pub fn save(&mut self) -> VirtioState {
        self.pause();
        let queues = self.served.iter().map(Served::queue).collect();
        VirtioState::new(self.acked_features, queues)
    }
}

/// The `reset`, `pause` and `resume` of a [`VirtioDevice`](super::VirtioDevice)
/// whose one queue is served by its field `queue`, a [`SingleQueue`] (block,
/// rng): they stop, pause and resume that queue and nothing else.
macro_rules! single_queue_lifecycle {
    () => {
        fn reset(&mut self) {
            self.queue.stop();
        }
        fn pause(&mut self) {
            self.queue.pause();
        }
        fn resume(&mut self) -> Result<(), $crate::devices::virtio::ActivateError> {
            self.queue.resume()
        }
    };
}
pub(crate) use single_queue_lifecycle;
