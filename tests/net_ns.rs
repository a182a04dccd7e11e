//! The network scenarios (tests/support/net_scenarios.rs) with
//! `--isolation ns`, each in a network namespace of its own. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/net_scenarios.rs"]
mod net_scenarios;

#[path = "support/nstest.rs"]
mod nstest;

fn main() {
    let inner = std::env::var_os("HULL_NET_TEST_INNER").is_some();
    nstest::run_ns_tests(
        net_scenarios::trials("ns"),
        "namespace tests",
        "the network tests need root (network namespaces, bridges, nftables)",
        || {
            // A trial's re-run inside its own network namespace builds nothing.
            if !inner {
                net_scenarios::build_runtime();
            }
        },
    );
}
