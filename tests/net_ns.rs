//! The network scenarios (tests/support/net_scenarios.rs) with
//! `--isolation ns`, each in a network namespace of its own. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/net_scenarios.rs"]
mod net_scenarios;

use libtest_mimic::Arguments;

fn main() {
    let args = Arguments::from_args();
    let mut trials = net_scenarios::trials("ns");
    let skip = std::env::var("HULL_SKIP_NS_TESTS").as_deref() == Ok("1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let inner = std::env::var_os("HULL_NET_TEST_INNER").is_some();
    if skip {
        eprintln!("namespace tests ignored: HULL_SKIP_NS_TESTS=1");
        trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
    } else if !root && !args.list {
        eprintln!(
            "the network tests need root (network namespaces, bridges, nftables): run them as root, or set HULL_SKIP_NS_TESTS=1 to skip them"
        );
        std::process::exit(1);
    } else if !args.list && !inner {
        net_scenarios::build_runtime();
    }
    libtest_mimic::run(&args, trials).exit();
}
