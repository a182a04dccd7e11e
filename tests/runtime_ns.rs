//! hull-runtime under real engines (podman 4.3, dockerd 20.10 with
//! docker-compose, containerd 1.6 with ctr) with hull's namespace backend,
//! on this host; and bad bundles. Each engine has its own dirs and socket
//! and runs in a network namespace the test makes. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/runtime_trials.rs"]
mod runtime_trials;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = runtime_trials::engine_trials("ns");
    trials.extend(runtime_trials::bundle_trials());
    let skip = std::env::var("HULL_SKIP_NS_TESTS").as_deref() == Ok("1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if skip {
        eprintln!("runtime tests ignored: HULL_SKIP_NS_TESTS=1");
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    } else if !root && !args.list {
        eprintln!(
            "hull-runtime's tests need root (engines, namespaces, cgroups): run them as root, or set HULL_SKIP_NS_TESTS=1 to skip them"
        );
        std::process::exit(1);
    } else if !args.list {
        runtime_trials::build();
    }
    libtest_mimic::run(&args, trials).exit();
}
