//! The `hull run` scenario suite (tests/support/scenarios.rs) with
//! `--isolation ns`: the agent as PID 1 of new namespaces on this host.
//! Needs root (mounts, namespaces, cgroups); `HULL_SKIP_NS_TESTS=1` reports
//! the trials as ignored instead.

#[path = "support/scenarios.rs"]
mod scenarios;

use libtest_mimic::Arguments;

fn main() {
    let args = Arguments::from_args();
    let mut trials = scenarios::trials(scenarios::Backend("ns"));
    trials.extend(scenarios::ns_trials());
    trials.extend(scenarios::volume_scenarios::volume_trials(
        scenarios::Backend("ns"),
    ));
    let skip = std::env::var("HULL_SKIP_NS_TESTS").as_deref() == Ok("1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if skip {
        eprintln!("namespace tests ignored: HULL_SKIP_NS_TESTS=1");
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    } else if !root && !args.list {
        eprintln!(
            "the namespace backend needs root (mounts, namespaces, cgroups): run the tests as root, or set HULL_SKIP_NS_TESTS=1 to skip them"
        );
        std::process::exit(1);
    } else if !args.list {
        scenarios::build_runtime();
    }
    libtest_mimic::run(&args, trials).exit();
}
