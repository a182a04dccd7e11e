//! Harness for the namespace suites (test targets with `harness = false`
//! that run on this host and need root): [`run_ns_tests`].
#![allow(dead_code)] // each test target uses its own subset

use libtest_mimic::{Arguments, Trial};

/// Runs `trials` as root on this host; never returns. `what` names the
/// suite in its messages, `needs` what root is needed for. With
/// `HULL_SKIP_NS_TESTS=1` every trial is reported as ignored; without root
/// the suite fails with the reason. `prepare` (building what the trials
/// run) is called only when trials are about to run.
pub fn run_ns_tests(mut trials: Vec<Trial>, what: &str, needs: &str, prepare: impl FnOnce()) -> ! {
    let args = Arguments::from_args();
    let skip = std::env::var("HULL_SKIP_NS_TESTS").as_deref() == Ok("1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if skip {
        eprintln!("{what} ignored: HULL_SKIP_NS_TESTS=1");
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    } else if !root && !args.list {
        eprintln!("{needs}: run them as root, or set HULL_SKIP_NS_TESTS=1 to skip them");
        std::process::exit(1);
    } else if !args.list {
        prepare();
    }
    libtest_mimic::run(&args, trials).exit();
}
