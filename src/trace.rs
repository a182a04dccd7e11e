//! Timestamps of the steps of a run, for finding where its time goes:
//! with `HULL_TRACE=1` each [`mark`] writes one line to stderr,
//! `hull-trace: +MS.mms PID what`, milliseconds since the process's first
//! mark (README, "Where a restored start's time goes").

use std::sync::OnceLock;
use std::time::Instant;

/// Turns the marks on.
pub const TRACE_ENV: &str = "HULL_TRACE";

fn origin() -> Option<Instant> {
    static ORIGIN: OnceLock<Option<Instant>> = OnceLock::new();
    *ORIGIN.get_or_init(|| (std::env::var(TRACE_ENV).as_deref() == Ok("1")).then(Instant::now))
}

/// Says that `what` happened now (nothing unless `HULL_TRACE=1`).
pub fn mark(what: &str) {
    if let Some(t0) = origin() {
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        eprintln!("hull-trace: +{ms:.1} {} {what}", std::process::id());
    }
}
