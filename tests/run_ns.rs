//! The `hull run` scenario suite (tests/support/scenarios.rs) with
//! `--isolation ns`: the agent as PID 1 of new namespaces on this host.
//! Needs root (mounts, namespaces, cgroups); `HULL_SKIP_NS_TESTS=1` reports
//! the trials as ignored instead.

#[path = "support/scenarios.rs"]
mod scenarios;

#[path = "support/nstest.rs"]
mod nstest;

fn main() {
    let mut trials = scenarios::trials(scenarios::Backend("ns"));
    trials.extend(scenarios::ns_trials());
    trials.extend(scenarios::volume_scenarios::volume_trials(
        scenarios::Backend("ns"),
    ));
    nstest::run_ns_tests(
        trials,
        "namespace tests",
        "the namespace backend needs root (mounts, namespaces, cgroups)",
        scenarios::build_runtime,
    );
}
