//! Spawning the VMM's threads (vCPUs, device loops) so that a panic on any
//! of them ends the VM instead of leaving it hanging: the panic becomes a
//! [`VmExit::Error`] on the exit channel, and `hull-vmm` exits 2 with the
//! message.
//!
//! This is also where per-thread-kind setup (a seccomp filter for vCPUs,
//! another for the device loop) belongs when the VMM is jailed: every VMM
//! thread starts here.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use crate::VmExit;

/// Starts a thread called `name` running `f`. If `f` panics, the panic is
/// caught and reported on `exit` as `VmExit::Error("NAME thread panicked:
/// MSG")`; the process's panic hook has already printed where it happened.
///
/// Shared state a panicking thread held a lock on stays usable: every lock
/// in the VMM is taken with `unwrap_or_else(PoisonError::into_inner)`, and
/// the VM ends on the report anyway. (With `panic = "abort"` the process
/// aborts at the panic instead, which does not hang either.)
pub fn spawn_named<F>(name: String, exit: Sender<VmExit>, f: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // AssertUnwindSafe: after a panic nothing of `f` is used again
            // except through poison-tolerant locks, and the VM is ended.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
                let msg = panic_message(payload.as_ref());
                // The receiver is gone only when the VM has already ended.
                let _ = exit.send(VmExit::Error(format!("{name} thread panicked: {msg}")));
            }
        })
}

/// The text a panic was raised with (`panic!("...")` gives a `&str` or a
/// `String`; anything else is reported as such).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a non-string panic payload)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_panicking_thread_becomes_an_exit_event() {
        let (tx, rx) = mpsc::channel();
        let t = spawn_named("vcpu0".into(), tx, || {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            panic!("index {i} out of range");
        })
        .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            VmExit::Error("vcpu0 thread panicked: index 3 out of range".into())
        );
        // The thread itself ended normally: nothing is left to hang on.
        t.join().unwrap();
    }

    #[test]
    fn a_static_str_panic_keeps_its_message_and_the_thread_its_name() {
        let (tx, rx) = mpsc::channel();
        spawn_named("virtio".into(), tx, || {
            assert_eq!(std::thread::current().name(), Some("virtio"));
            panic!("queue state lost")
        })
        .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            VmExit::Error("virtio thread panicked: queue state lost".into())
        );
    }

    #[test]
    fn a_thread_that_returns_reports_nothing() {
        let (tx, rx) = mpsc::channel();
        spawn_named("vcpu1".into(), tx, || {})
            .unwrap()
            .join()
            .unwrap();
        // The only sender went with the thread: nothing was sent.
        assert_eq!(rx.recv(), Err(mpsc::RecvError));
    }
}
