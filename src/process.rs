//! The host processes a container is made of (its sandbox and its monitor):
//! identified so that a recycled pid is not mistaken for them, checked,
//! signalled and waited for.

use std::fs;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys;

/// A process hull started, identified so that a recycled pid is not mistaken
/// for it: the start time (clock ticks since boot, /proc/PID/stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// Identifies a live process; None when it does not exist.
    pub fn of(pid: i32) -> Option<ProcessId> {
        start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// Whether this very process (not a later one with the same pid) is alive.
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time) && !is_zombie(self.pid)
    }

    /// Sends `signal` to the process if it is still this one.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        if !self.is_alive() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        sys::kill(self.pid, signal)
    }
}

/// A signal given as a number (1 to 64) or a name, with or without `SIG`,
/// in any case (`15`, `TERM`, `sigkill`); None when it is neither.
pub fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

/// Whether `p` names a live process.
pub fn alive(p: Option<ProcessId>) -> bool {
    p.is_some_and(|p| p.is_alive())
}

/// Sends SIGKILL to each of `procs` still alive and waits up to `timeout`
/// for all of them to be gone; false when some outlived it.
pub fn kill_and_wait(procs: &[ProcessId], timeout: Duration) -> bool {
    for p in procs {
        // Gone already, or another process now: nothing to kill.
        let _ = p.signal(libc::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    while procs.iter().any(ProcessId::is_alive) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Field 22 of /proc/PID/stat (after the parenthesised command, which may
/// itself contain spaces and parentheses).
fn start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|st| st == "Z" || st == "X")
        })
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let other = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
        assert!(other.signal(0).is_err());
        assert!(ProcessId::of(-1).is_none());
    }

    #[test]
    fn kill_and_wait_ends_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let p = ProcessId::of(child.id() as i32).unwrap();
        // A reaper: a zombie counts as gone, but reap it all the same.
        let t = std::thread::spawn(move || child.wait());
        assert!(kill_and_wait(&[p], Duration::from_secs(10)));
        assert!(!p.is_alive());
        t.join().unwrap().unwrap();
    }
}
