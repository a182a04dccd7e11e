//! Pausing running vCPUs for a snapshot, as Firecracker does: a signal
//! kicks each vCPU thread out of KVM_RUN, and its handler sets the thread's
//! `immediate_exit` so a kick that lands just before KVM_RUN is not lost
//! (KVM then returns EINTR at once). The paused vCPU re-enters KVM_RUN once
//! with `immediate_exit` set, which completes an I/O exit still pending
//! (the guest's `out` instruction retires) without running guest code.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

thread_local! {
    /// This thread's `kvm_run.immediate_exit`, while it runs a vCPU.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks vCPU threads.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {
    // Only a thread-local read and a volatile byte store: async-signal-safe.
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: `p` points into this thread's kvm_run mapping, set by
        // `Pause::enter` and cleared before the VcpuFd (and its mapping)
        // goes away; a byte store to it is what KVM expects.
        unsafe { p.write_volatile(1) };
    }
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; the handler is an
        // async-signal-safe extern "C" fn; no SA_RESTART, so KVM_RUN
        // returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// A request to pause every vCPU, shared by the vCPU threads and whatever
/// asks for the pause (the boot-timer port).
#[derive(Default)]
pub struct Pause {
    requested: AtomicBool,
    threads: Mutex<Vec<libc::pthread_t>>,
}

impl Pause {
    pub fn new() -> Self {
        install_handler();
        Pause::default()
    }

    /// Called by a vCPU thread before its first KVM_RUN, with its
    /// `kvm_run.immediate_exit`.
    pub fn enter(&self, immediate_exit: *mut u8) {
        IMMEDIATE_EXIT.with(|c| c.set(immediate_exit));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(me);
        if self.requested() {
            on_kick(0);
        }
    }

    /// Called by a vCPU thread when it stops using its VcpuFd.
    pub fn leave(&self) {
        IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&t| t != me);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Asks every vCPU to pause, and kicks the ones in KVM_RUN.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        for &t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            // SAFETY: `t` is a vCPU thread of this process; vCPU threads
            // never exit before the process does (they park once paused).
            unsafe { libc::pthread_kill(t, kick_signal()) };
        }
    }
}
