//! The detached monitor (`run -d`): the container's monitor (the hull process that holds the
//! sandbox and relays its session into the log files) goes to the
//! background; the caller waits until the process has started, then prints
//! the container id, or the error and docker's exit status when it did not.

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("creating a pipe for the monitor")]
    Pipe(#[source] std::io::Error),
    #[error("opening /dev/null for the monitor")]
    DevNull(#[source] std::io::Error),
    #[error("forking the monitor")]
    Fork(#[source] std::io::Error),
}

/// Which side of the fork this is.
pub enum Role {
    /// The command-line process: exit with this status.
    Caller(i32),
    /// The background monitor: go on with the container.
    Monitor(Notifier),
}

/// The monitor's line to the waiting caller (used once).
pub struct Notifier(Rc<RefCell<Option<File>>>);

impl Notifier {
    /// A callback for when the process has started.
    pub fn on_started(&self) -> Box<dyn FnOnce()> {
        let slot = self.0.clone();
        Box::new(move || {
            if let Some(mut f) = slot.borrow_mut().take() {
                let _ = f.write_all(b"started\n");
            }
        })
    }

    /// Passes a warning on to the caller, which prints it (a no-op once the
    /// process started and the caller is gone).
    pub fn warn(&self, message: &str) {
        if let Some(f) = self.0.borrow_mut().as_mut() {
            let _ = writeln!(f, "warning {}", message.replace('\n', " "));
        }
    }

    /// Tells the caller the container ended before its process started
    /// (a no-op once it started).
    pub fn failed(&self, status: i32, message: &str) {
        if let Some(mut f) = self.0.borrow_mut().take() {
            let _ = write!(f, "failed {status}\n{message}");
        }
    }
}

/// Forks the monitor. Must run before hull starts any thread.
pub fn fork_monitor(id: &str) -> Result<Role, MonitorError> {
    let (mut r, w) = sys::pipe().map_err(MonitorError::Pipe)?;
    let devnull = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(MonitorError::DevNull)?;
    let devnull = OwnedFd::from(devnull);
    // SAFETY: hull is single-threaded here (see the callers), so the child
    // may go on running Rust code.
    match unsafe { sys::fork() }.map_err(MonitorError::Fork)? {
        sys::Fork::Child => {
            drop(r);
            // Its own session: no terminal signals reach it, and the
            // caller's end leaves it running. Output goes to the logs only.
            let _ = sys::detach_from_terminal(&devnull);
            Ok(Role::Monitor(Notifier(Rc::new(RefCell::new(Some(w))))))
        }
        sys::Fork::Parent => {
            drop(w);
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            Ok(Role::Caller(report(id, &msg)))
        }
    }
}

/// What the caller prints and exits with, from the monitor's word.
fn report(id: &str, mut msg: &str) -> i32 {
    while let Some(rest) = msg.strip_prefix("warning ") {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        eprintln!("hull: {line}");
        msg = after;
    }
    if msg.starts_with("started") {
        println!("{id}");
        return 0;
    }
    if let Some(rest) = msg.strip_prefix("failed ") {
        let (code, why) = rest.split_once('\n').unwrap_or((rest, ""));
        eprintln!("hull: {}", why.trim());
        return code.trim().parse().unwrap_or(crate::EXIT_HULL_ERROR);
    }
    eprintln!(
        "hull: the container's monitor ended before the container started (see `hull inspect {}`)",
        &id[..id.len().min(12)]
    );
    crate::EXIT_HULL_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports() {
        assert_eq!(report("abc", "started\n"), 0);
        assert_eq!(report("abc", "failed 127\nexec: not found"), 127);
        assert_eq!(report("abc", "failed x\n?"), crate::EXIT_HULL_ERROR);
        assert_eq!(report("abc", ""), crate::EXIT_HULL_ERROR);
        assert_eq!(report("abc", "warning w\nstarted\n"), 0);
        assert_eq!(report("abc", "warning w\nfailed 2\nno"), 2);
    }

    #[test]
    fn notifier_speaks_once() {
        let (mut r, w) = sys::pipe().unwrap();
        let n = Notifier(Rc::new(RefCell::new(Some(w))));
        n.warn("careful\nnow");
        (n.on_started())();
        n.failed(3, "too late");
        n.warn("gone");
        drop(n);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "warning careful now\nstarted\n");
    }
}
