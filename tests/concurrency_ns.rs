//! Many sandboxes at once with `--isolation ns`, on this host (issue 19):
//! 100 concurrent `hull run --rm`, and 10 clients x 5 loops of `run -d` /
//! `exec` / `rm -f` with `ps` consistent throughout. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/concurrency.rs"]
mod concurrency;

#[path = "support/nstest.rs"]
mod nstest;

use std::time::Duration;

use libtest_mimic::Trial;

fn main() {
    let trials = vec![
        Trial::test("ns::100_concurrent_runs_all_succeed", || {
            concurrency::concurrent_runs("ns", 100, Duration::from_secs(120))
        }),
        Trial::test("ns::10_clients_run_exec_rm_ps_consistent", || {
            concurrency::clients_run_exec_rm("ns", 10, 5, Duration::from_secs(120))
        }),
    ];
    nstest::run_ns_tests(
        trials,
        "namespace tests",
        "the namespace backend needs root (mounts, namespaces, cgroups)",
        concurrency::build_runtime,
    );
}
