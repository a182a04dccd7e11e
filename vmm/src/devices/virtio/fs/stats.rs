//! Where a virtio-fs device's time goes, for whoever tunes it: per opcode,
//! how many requests and how long the server spent on them, and how long
//! the device waited for the guest between requests. Off unless this
//! module's debug log is on
//! (`RUST_LOG=hull_vmm::devices::virtio::fs=debug`); then a line every
//! [`PERIOD`] of activity, e.g.
//!
//! ```text
//! virtio-fs stats over 2.0 s: 812 requests in 406 wakeups, server 0.31 s, waiting for the guest 1.69 s; CREATE 203 x 0.90 ms, LOOKUP 203 x 0.20 ms, ...
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// How often a line is logged while requests come in.
pub const PERIOD: Duration = Duration::from_secs(2);

#[derive(Default, Clone, Copy)]
struct Op {
    count: u64,
    busy: Duration,
}

pub struct Stats {
    enabled: bool,
    ops: BTreeMap<u32, Op>,
    wakeups: u64,
    /// Time between the end of one batch of requests and the next wakeup.
    idle: Duration,
    last_done: Option<Instant>,
    since: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            enabled: log::log_enabled!(log::Level::Debug),
            ops: BTreeMap::new(),
            wakeups: 0,
            idle: Duration::ZERO,
            last_done: None,
            since: None,
        }
    }

    /// The device was woken with requests to serve.
    pub fn wakeup(&mut self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if let Some(t) = self.last_done.take() {
            self.idle += now.saturating_duration_since(t);
        }
        self.since.get_or_insert(now);
        self.wakeups += 1;
    }

    /// The start of one request, if counting.
    pub fn start(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    /// One request of `opcode` answered, begun at `start`.
    pub fn done(&mut self, opcode: u32, start: Option<Instant>) {
        let Some(start) = start else { return };
        let now = Instant::now();
        let op = self.ops.entry(opcode).or_default();
        op.count += 1;
        op.busy += now.saturating_duration_since(start);
        self.last_done = Some(now);
        if let Some(since) = self.since {
            if now.saturating_duration_since(since) >= PERIOD {
                log::debug!("{}", self.line(now.saturating_duration_since(since)));
                self.ops.clear();
                self.wakeups = 0;
                self.idle = Duration::ZERO;
                self.since = Some(now);
            }
        }
    }

    fn line(&self, over: Duration) -> String {
        let requests: u64 = self.ops.values().map(|o| o.count).sum();
        let busy: Duration = self.ops.values().map(|o| o.busy).sum();
        let mut s = format!(
            "virtio-fs stats over {:.1} s: {requests} requests in {} wakeups, server {:.2} s, waiting for the guest {:.2} s;",
            over.as_secs_f64(),
            self.wakeups,
            busy.as_secs_f64(),
            self.idle.as_secs_f64(),
        );
        let mut by_time: Vec<_> = self.ops.iter().collect();
        by_time.sort_by_key(|(_, op)| std::cmp::Reverse(op.busy));
        for (code, op) in by_time {
            let _ = write!(
                s,
                " {} {} x {:.3} ms,",
                super::protocol::opcode_name(*code),
                op.count,
                op.busy.as_secs_f64() * 1e3 / op.count.max(1) as f64
            );
        }
        s.pop();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_names_opcodes_by_time_spent() {
        let mut s = Stats::new();
        s.enabled = true;
        s.wakeup();
        let t = s.start();
        s.done(super::super::protocol::LOOKUP, t);
        s.ops.get_mut(&super::super::protocol::LOOKUP).unwrap().busy = Duration::from_millis(1);
        s.ops.insert(
            super::super::protocol::CREATE,
            Op {
                count: 2,
                busy: Duration::from_millis(4),
            },
        );
        let line = s.line(Duration::from_secs(2));
        assert!(
            line.starts_with("virtio-fs stats over 2.0 s: 3 requests in 1 wakeups, server 0.01 s"),
            "{line}"
        );
        assert!(
            line.ends_with("CREATE 2 x 2.000 ms, LOOKUP 1 x 1.000 ms"),
            "{line}"
        );
    }
}
