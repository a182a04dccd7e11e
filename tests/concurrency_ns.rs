//! Many sandboxes at once with `--isolation ns`, on this host (issue 19):
//! 100 concurrent `hull run --rm`, and 10 clients x 5 loops of `run -d` /
//! `exec` / `rm -f` with `ps` consistent throughout. Needs root;
//! `HULL_SKIP_NS_TESTS=1` reports the trials as ignored instead.

#[path = "support/concurrency.rs"]
mod concurrency;

use std::time::Duration;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials = vec![
        Trial::test("ns::100_concurrent_runs_all_succeed", || {
            concurrency::concurrent_runs("ns", 100, Duration::from_secs(120))
        }),
        Trial::test("ns::10_clients_run_exec_rm_ps_consistent", || {
            concurrency::clients_run_exec_rm("ns", 10, 5, Duration::from_secs(120))
        }),
    ];
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
        build_runtime();
    }
    libtest_mimic::run(&args, trials).exit();
}

/// hull (with this test binary's profile: it runs the one beside it) and
/// the static agent the ns backend runs.
fn build_runtime() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(repo)
        .args(["build", "--quiet", "-p", "hull"]);
    let exe = std::env::current_exe().expect("test binary path");
    if exe
        .ancestors()
        .any(|d| d.file_name().is_some_and(|n| n == "release"))
    {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "cargo build of hull failed");
    let status = std::process::Command::new(repo.join("agent/build-static.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running agent/build-static.sh");
    assert!(status.success(), "agent/build-static.sh failed");
}
