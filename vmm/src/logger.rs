//! hull-vmm's log lines on stderr, `[SECONDS LEVEL target] message`, with
//! the seconds since hull-vmm started. `RUST_LOG` chooses what is shown as
//! env_logger reads it: comma-separated `LEVEL` or `target=LEVEL` (the
//! longest matching target wins; `off`, `error`, `warn`, `info`, `debug`,
//! `trace`); the default is `warn`.
//!
//! A logger of its own rather than env_logger: hull-vmm starts once per
//! microVM, and env_logger's setup (its filter parser, terminal and colour
//! detection) took 10-45 ms of each start in the emulated KVM host, where
//! a restore from main() to a running guest takes 100-300 ms.

use std::io::Write;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

struct Logger {
    start: Instant,
    /// Default level, then (target prefix, level), longest prefix first.
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

/// `RUST_LOG`'s directives: the default level and per-target levels.
/// Words that are not a level (or `target=level`) are ignored, as
/// env_logger ignores them (with a warning hull-vmm does not repeat).
fn directives(spec: &str) -> (LevelFilter, Vec<(String, LevelFilter)>) {
    let mut default = LevelFilter::Warn;
    let mut targets = Vec::new();
    for d in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match d.split_once('=') {
            Some((target, level)) => {
                if let Ok(l) = level.trim().parse() {
                    targets.push((target.trim().to_string(), l));
                }
            }
            None => match d.parse() {
                Ok(l) => default = l,
                // A bare target name means "everything from it".
                Err(_) => targets.push((d.to_string(), LevelFilter::Trace)),
            },
        }
    }
    targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
    (default, targets)
}

impl Logger {
    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| {
                target == t
                    || (target.starts_with(t.as_str()) && target[t.len()..].starts_with("::"))
            })
            .map_or(self.default, |(_, l)| *l)
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= self.level_for(m.target())
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = self.start.elapsed();
        // One write per line, so lines of several threads do not mix.
        let line = format!(
            "[{:4}.{:06} {:<5} {}] {}\n",
            t.as_secs(),
            t.subsec_micros(),
            r.level(),
            r.target(),
            r.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; `start` is when hull-vmm started.
pub fn init(start: Instant) {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (default, targets) = directives(&spec);
    let max = targets.iter().map(|(_, l)| *l).fold(default, std::cmp::max);
    let logger = Logger {
        start,
        default,
        targets,
    };
    // Leaked: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger(spec: &str) -> Logger {
        let (default, targets) = directives(spec);
        Logger {
            start: Instant::now(),
            default,
            targets,
        }
    }

    #[test]
    fn rust_log_directives_choose_the_level_per_target() {
        let l = logger("");
        assert_eq!(l.level_for("hull_vmm::builder"), LevelFilter::Warn);
        let l = logger("info,hull_vmm::devices=trace, hull_vmm = debug,bogus=loud");
        assert_eq!(l.level_for("hull_vmm::builder"), LevelFilter::Debug);
        assert_eq!(l.level_for("hull_vmm::devices::virtio"), LevelFilter::Trace);
        assert_eq!(l.level_for("hull_vmm_other"), LevelFilter::Info);
        assert_eq!(l.level_for("kvm_ioctls"), LevelFilter::Info);
        assert_eq!(logger("off").level_for("hull_vmm"), LevelFilter::Off);
        assert_eq!(
            logger("hull_vmm").level_for("hull_vmm::x"),
            LevelFilter::Trace
        );
        assert_eq!(logger("hull_vmm").level_for("other"), LevelFilter::Warn);
    }
}
