//! One suite's trials shared between several emulated KVM hosts running at
//! once (`HULL_VMTEST_HOSTS`, default 2: one emulated host keeps about one
//! CPU busy). Each host runs the test binary with the names of its trials
//! in `HULL_VMTEST_ONLY`; a wedged host is restarted for its own trials that
//! did not report, as with one host.
//!
//! The split balances the trials' last measured times (kept per suite in
//! `~/.cache/hull/vmtest/SUITE.times`, `name seconds` a line, over the
//! times checked in at `tests/kvm-host/times/SUITE.times` for a machine
//! that has none yet): longest first, each to the host with the least work
//! so far; trials never measured count as the mean of the others.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use libtest_mimic::{Arguments, Trial};

/// How many emulated hosts one suite may use at once.
fn host_count() -> usize {
    std::env::var("HULL_VMTEST_HOSTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1)
}

/// The trial names each host runs; empty: one host runs all of them.
pub fn plan_hosts(args: &Arguments, trials: &[Trial], suite: &str) -> Vec<Vec<String>> {
    let runnable: Vec<&str> = trials
        .iter()
        .filter(|t| !args.is_filtered_out(t) && !args.is_ignored(t))
        .map(|t| t.name())
        .collect();
    let hosts = host_count().min(runnable.len());
    if hosts <= 1 {
        return Vec::new();
    }
    let known = load_times(suite);
    let measured: Vec<f64> = runnable
        .iter()
        .filter_map(|n| known.get(*n).copied())
        .collect();
    let default = if measured.is_empty() {
        1.0
    } else {
        measured.iter().sum::<f64>() / measured.len() as f64
    };
    let cost = |n: &str| known.get(n).copied().unwrap_or(default);
    let mut by_cost = runnable.clone();
    by_cost.sort_by(|a, b| cost(b).total_cmp(&cost(a)));
    let mut load = vec![0.0f64; hosts];
    let mut host_of: HashMap<&str, usize> = HashMap::new();
    for name in by_cost {
        let (h, _) = load
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one host");
        load[h] += cost(name);
        host_of.insert(name, h);
    }
    // Each host keeps the suite's order; the first host also reports the
    // ignored and filtered-out trials, as one host would.
    let mut plan = vec![Vec::new(); hosts];
    for t in trials {
        let h = host_of.get(t.name()).copied().unwrap_or(0);
        plan[h].push(t.name().to_string());
    }
    plan
}

/// Runs `exe` in one emulated host per entry of `plan` at once (one host
/// for everything when `plan` is empty); returns the suite's exit status.
pub fn run_hosts(exe: &Path, suite: &str, plan: Vec<Vec<String>>) -> i32 {
    let started = Instant::now();
    let mut times = Vec::new();
    let code = if plan.is_empty() {
        super::run_in_kvm_host(exe, None, &|line| println!("{line}"), &mut times)
    } else {
        eprintln!(
            "vmtest: {suite}: its trials shared between {} emulated hosts at once (HULL_VMTEST_HOSTS)",
            plan.len()
        );
        run_shared(exe, &plan, &mut times)
    };
    let total = started.elapsed().as_secs_f64();
    if !times.is_empty() {
        let each: Vec<String> = times.iter().map(|(n, s)| format!("{n} {s:.0} s")).collect();
        eprintln!(
            "vmtest: {suite}: {} trials ran in {total:.0} s (each since the previous one in its host: {})",
            times.len(),
            each.join(", ")
        );
        save_times(suite, &times);
    }
    code
}

/// One thread per host. The trials' result lines are printed as they come;
/// a host's other lines (libtest's header, failures, summary) together
/// once it ends, so two hosts' blocks never interleave.
fn run_shared(exe: &Path, plan: &[Vec<String>], times: &mut Vec<(String, f64)>) -> i32 {
    let print = Mutex::new(());
    let results: Vec<(i32, Vec<(String, f64)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .iter()
            .map(|names| {
                let print = &print;
                scope.spawn(move || {
                    let held = Mutex::new(Vec::new());
                    let out = |line: String| {
                        if super::finished_trial(&line).is_some() {
                            let _guard = print.lock();
                            println!("{line}");
                        } else {
                            held.lock().expect("held lines").push(line);
                        }
                    };
                    let mut timed = Vec::new();
                    let code = super::run_in_kvm_host(exe, Some(names), &out, &mut timed);
                    let held = held.into_inner().expect("held lines");
                    let _guard = print.lock();
                    for line in held {
                        println!("{line}");
                    }
                    (code, timed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((101, Vec::new())))
            .collect()
    });
    let mut code = 0;
    for (c, timed) in results {
        // The worst outcome: 125 (a host could not run) over 101 (a trial failed).
        code = code.max(c);
        times.extend(timed);
    }
    code
}

/// Where a suite's trial times are kept.
fn times_file(suite: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hull/vmtest").join(format!("{suite}.times")))
}

/// The checked-in times, then this machine's last ones over them.
fn load_times(suite: &str) -> HashMap<String, f64> {
    let seed = super::repo().join(format!("tests/kvm-host/times/{suite}.times"));
    let mut times = read_times(&seed);
    if let Some(f) = times_file(suite) {
        times.extend(read_times(&f));
    }
    times
}

fn read_times(file: &Path) -> HashMap<String, f64> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (name, secs) = l.rsplit_once(' ')?;
            Some((name.to_string(), secs.parse().ok()?))
        })
        .collect()
}

/// Best effort: the split is only as good as the last times, never wrong.
fn save_times(suite: &str, times: &[(String, f64)]) {
    let Some(file) = times_file(suite) else {
        return;
    };
    let mut all = read_times(&file);
    for (name, secs) in times {
        all.insert(name.clone(), *secs);
    }
    let mut lines: Vec<String> = all.iter().map(|(n, s)| format!("{n} {s:.1}")).collect();
    lines.sort();
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = file
        .parent()
        .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        && std::fs::write(&tmp, lines.join("\n") + "\n").is_ok()
        && std::fs::rename(&tmp, &file).is_ok();
    if !written {
        let _ = std::fs::remove_file(&tmp);
    }
}
