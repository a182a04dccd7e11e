//! Running `hull` from the VM and namespace suites: where the binary is,
//! the static agent they need, and waiting for a child with a time limit.
#![allow(dead_code)] // each test target uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The containers a hull state dir still holds (their directory names).
pub fn containers_in(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("containers"))
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The `hull` binary beside the test binary (target/PROFILE/hull).
pub fn hull_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/...")
        .join("hull");
    assert!(p.exists(), "{} is missing: cargo build", p.display());
    p
}

/// Builds `hull-vmm` with this test binary's profile. Only `hull-vmm`:
/// `hull` and `hull-runtime` are this package's own binaries, which cargo
/// builds for every integration test (`CARGO_BIN_EXE_*`) with the test
/// build's features; `cargo build -p hull` would build them, and the
/// libraries under them, a second time with other features.
pub fn build_vmm() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "-p", "hull-vmm"]);
    let exe = std::env::current_exe().expect("test binary path");
    if exe
        .ancestors()
        .any(|d| d.file_name().is_some_and(|n| n == "release"))
    {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "cargo build -p hull-vmm failed");
}

/// Builds the static agent the sandboxes run (agent/build-static.sh).
pub fn build_static_agent() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(repo.join("agent/build-static.sh"))
        .stdout(Stdio::null())
        .status()
        .expect("running agent/build-static.sh");
    assert!(status.success(), "agent/build-static.sh failed");
}

/// How many times longer than on a quiet machine anything may take here:
/// `HULL_TEST_PATIENCE` when set (the VM test harness sets it for its
/// emulated hosts from the machine's load when it starts them), else this
/// machine's load per CPU; at least 1, at most [`MAX_PATIENCE`]. Only
/// limits that tell a hang or a lost event from a slow machine scale with
/// it, never what a test asserts about speed on a quiet machine.
pub fn patience() -> f64 {
    let p = match std::env::var(PATIENCE_VAR) {
        Ok(v) => v.trim().parse::<f64>().unwrap_or(1.0),
        Err(_) => load_per_cpu(),
    };
    if p.is_finite() {
        p.clamp(1.0, MAX_PATIENCE)
    } else {
        1.0
    }
}

/// See [`patience`].
pub const PATIENCE_VAR: &str = "HULL_TEST_PATIENCE";

/// The most [`patience`] grants: past it the machine is not slow but stuck.
pub const MAX_PATIENCE: f64 = 8.0;

/// `base` scaled by [`patience`].
pub fn patient(base: Duration) -> Duration {
    base.mul_f64(patience())
}

/// The 1-minute load average divided by the CPUs this process may use.
pub fn load_per_cpu() -> f64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    load / cpus as f64
}

/// Sets `HULL_AGENT_ANSWER_SECS` (hull's test aid for how long the agent
/// has to answer, 60 s by default) to the default scaled by [`patience`]
/// when the machine is slow, so a loaded machine is not mistaken for a
/// silent agent; on a quiet machine hull's own default stays.
pub fn answer_patiently(cmd: &mut Command) -> &mut Command {
    let p = patience();
    if p > 1.0 {
        cmd.env("HULL_AGENT_ANSWER_SECS", format!("{}", (60.0 * p).ceil()));
    }
    cmd
}

/// Collects `child`'s output, killing it (SIGKILL) once `limit` has passed;
/// the second value says whether the limit was reached.
pub fn wait_within(child: Child, limit: Duration) -> std::io::Result<(Output, bool)> {
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) of a process this test started (and has not
        // reaped: `done` is set only after the wait).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let started = Instant::now();
    let out = child.wait_with_output();
    done.store(true, Ordering::SeqCst);
    Ok((out?, started.elapsed() >= limit))
}

/// Every process whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{pid}: {cmd}"));
            }
        }
    }
    found
}
