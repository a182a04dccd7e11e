//! hull-runtime under real engines (podman 4.3, dockerd 20.10 with
//! docker-compose, containerd 1.6 with ctr) with hull's namespace backend,
//! on this host; and bad bundles. Each engine has its own dirs and socket
//! and runs in a network namespace the test makes. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/runtime_trials.rs"]
mod runtime_trials;

#[path = "support/nstest.rs"]
mod nstest;

use libtest_mimic::Trial;

fn main() {
    let mut trials: Vec<Trial> = runtime_trials::engine_trials("ns");
    trials.extend(runtime_trials::bundle_trials());
    nstest::run_ns_tests(
        trials,
        "runtime tests",
        "hull-runtime's tests need root (engines, namespaces, cgroups)",
        runtime_trials::build,
    );
}
