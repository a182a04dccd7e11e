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
use super::persist::QueueSnapshot;
use super::{ActivateError, Interrupt, LogLimit, Rounds};

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
