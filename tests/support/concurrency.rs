//! Many sandboxes at once (issue 19), against one backend: concurrent
//! `hull run --rm` all succeed and leave nothing behind; clients running
//! `run -d` / `exec` / `rm -f` in parallel never see a container lost,
//! doubled or half-written in `ps`.
//!
//! Each trial has its own state dir and admission dir (so other hull runs
//! on the machine do not take its start slots), and a busybox rootfs shared
//! by the whole binary.
#![allow(dead_code)] // each test target uses its own subset

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;

#[path = "busybox.rs"]
mod busybox;
#[path = "hull_proc.rs"]
mod hull_proc;

#[allow(unused_imports)] // concurrency_vm builds the agent through it
pub use hull_proc::{build_static_agent, hull_bin, processes_mentioning};

fn rootfs() -> &'static Path {
    busybox::shared_rootfs()
}

/// One trial's world: a state dir and an admission dir of its own.
pub struct World {
    pub backend: &'static str,
    state: tempfile::TempDir,
    admission: tempfile::TempDir,
}

impl World {
    pub fn new(backend: &'static str) -> World {
        World {
            backend,
            state: tempfile::tempdir().expect("tempdir"),
            admission: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn hull(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hull_bin());
        // No network: `run` defaults to the bridge network, which must not
        // be built on the machine's own network.
        c.env("HULL_ADMISSION_DIR", self.admission.path())
            .env("HULL_NETWORK", "none")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .stdin(Stdio::null());
        hull_proc::answer_patiently(&mut c);
        c
    }

    /// `hull run --isolation B --rootfs R FLAGS CMD`.
    pub fn run(&self, flags: &[&str], cmd: &[&str]) -> Command {
        let mut c = self.hull(&["run", "--isolation", self.backend, "--rootfs"]);
        c.arg(rootfs()).args(flags).args(cmd);
        c
    }

    fn containers(&self) -> Vec<String> {
        hull_proc::containers_in(self.state.path())
    }

    /// What a finished trial must not leave: state dirs, processes or mounts
    /// naming the state dir, the ns containers' cgroups (`ns-<short id>`,
    /// by the ids in `seen`), live memory reservations.
    pub fn check_nothing_left(&self, seen: &BTreeSet<String>) -> Result<(), Failed> {
        let left = self.containers();
        check(left.is_empty(), || format!("state dirs left: {left:?}"))?;
        let state = self.state.path().to_string_lossy().into_owned();
        // The last sandboxes may still be on their way out for a moment.
        let deadline = Instant::now() + hull_proc::patient(Duration::from_secs(30));
        loop {
            let procs = processes_mentioning(&state);
            if procs.is_empty() {
                break;
            }
            check(Instant::now() < deadline, || {
                format!("processes left: {procs:?}")
            })?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&state))
            .map(str::to_string)
            .collect();
        check(mounts.is_empty(), || format!("mounts left: {mounts:?}"))?;
        let cgroups = cgroups_named(seen);
        check(cgroups.is_empty(), || format!("cgroups left: {cgroups:?}"))?;
        // A reservation file may outlive a monitor killed by `rm -f` (the
        // next admission removes it); it must not stay locked.
        let held: Vec<PathBuf> = std::fs::read_dir(self.admission.path().join("memory"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| is_locked(p))
            .collect();
        check(held.is_empty(), || {
            format!("guest memory reservations still held: {held:?}")
        })
    }
}

/// Whether someone holds a flock on `path`.
fn is_locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; no memory involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

pub fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

fn show(o: &Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    format!(
        "exit {:?} (signal {:?})\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        o.status.signal(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` to the end; killed (and an error) after `limit`.
pub fn output(mut cmd: Command, limit: Duration) -> Result<Output, Failed> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting hull: {e}"))?;
    let (out, hung) =
        hull_proc::wait_within(child, limit).map_err(|e| format!("waiting for hull: {e}"))?;
    check(!hung, || {
        format!(
            "hull hung: killed after {} s; {}",
            limit.as_secs(),
            show(&out)
        )
    })?;
    Ok(out)
}

/// Directories `ns-<id>` for the short ids in `ids`, anywhere in the
/// cgroup hierarchies hull uses (under a `hull` directory).
fn cgroups_named(ids: &BTreeSet<String>) -> Vec<PathBuf> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("ns-").is_some_and(|id| ids.contains(id)) {
                found.push(e.path());
            } else if d.components().count() < 8 {
                stack.push(e.path());
            }
        }
    }
    found
}

/// `n` concurrent `hull run --rm` each print their own line and exit 0,
/// all within `bound`; nothing is left afterwards.
pub fn concurrent_runs(backend: &'static str, n: usize, bound: Duration) -> Result<(), Failed> {
    // The bound is a quiet machine's; a loaded one gets more time.
    let bound = hull_proc::patient(bound);
    let w = World::new(backend);
    let t0 = Instant::now();
    let results: Vec<Result<Output, Failed>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let w = &w;
                s.spawn(move || {
                    let line = format!("echo run-{i} $(hostname)");
                    output(w.run(&["--rm"], &["sh", "-c", &line]), bound)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = t0.elapsed();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(o) => {
                let out = String::from_utf8_lossy(&o.stdout).into_owned();
                let want = format!("run-{i} ");
                match out.strip_prefix(&want) {
                    Some(host) if o.status.code() == Some(0) && host.ends_with('\n') => {
                        seen.insert(host.trim().to_string());
                    }
                    _ => failures.push(format!("run {i}: {}", show(&o))),
                }
            }
            Err(e) => failures.push(format!("run {i}: {e:?}")),
        }
    }
    check(failures.is_empty(), || {
        format!(
            "{} of {n} concurrent runs failed:\n{}",
            failures.len(),
            failures.join("\n")
        )
    })?;
    check(seen.len() == n, || {
        format!("{n} runs must be {n} containers; hostnames: {seen:?}")
    })?;
    eprintln!("{n} concurrent {backend} runs: all succeeded in {took:.1?}");
    check(took < bound, || {
        format!("{n} concurrent runs took {took:?}, over {bound:?}")
    })?;
    w.check_nothing_left(&seen)
}

/// `ps --json` parsed: (id, status) of every container, or why not.
fn ps(w: &World) -> Result<Vec<(String, String)>, String> {
    let o = output(
        w.hull(&["ps", "-a", "--json"]),
        hull_proc::patient(Duration::from_secs(60)),
    )
    .map_err(|e| format!("{e:?}"))?;
    if o.status.code() != Some(0) || !o.stderr.is_empty() {
        return Err(format!("ps failed or warned: {}", show(&o)));
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .map_err(|e| format!("ps --json is not JSON ({e}): {}", show(&o)))?;
    let list = v.as_array().ok_or("ps --json is not an array")?;
    Ok(list
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// `clients` in parallel, each `loops` times: `run -d` a sleeper, `exec`
/// in it (the output must be its own), `rm -f` it. Meanwhile `ps` runs
/// over and over: it must always parse, never list an id twice, and list
/// every container a client holds (between its `run -d` and its `rm -f`)
/// as running. At the end: no container and nothing left.
pub fn clients_run_exec_rm(
    backend: &'static str,
    clients: usize,
    loops: usize,
    bound: Duration,
) -> Result<(), Failed> {
    let bound = hull_proc::patient(bound);
    let w = World::new(backend);
    let held: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let seen: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let (client_results, ps_result) = std::thread::scope(|s| {
        let checker = s.spawn(|| -> Result<usize, String> {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let before: HashSet<String> = held.lock().unwrap().clone();
                let list = ps(&w)?;
                let after: HashSet<String> = held.lock().unwrap().clone();
                let mut ids = HashSet::new();
                for (id, status) in &list {
                    if !ids.insert(id.clone()) {
                        return Err(format!("ps listed {id} twice: {list:?}"));
                    }
                    if status.is_empty() {
                        return Err(format!("ps listed {id} without a status"));
                    }
                }
                // Held all through this ps: it must be there, running.
                for id in before.intersection(&after) {
                    let st = list.iter().find(|(i, _)| i == id).map(|(_, s)| s.as_str());
                    if st != Some("running") {
                        return Err(format!("ps lost a running container {id}: {st:?}"));
                    }
                }
                rounds += 1;
            }
            Ok(rounds)
        });
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (w, held, seen) = (&w, &held, &seen);
                s.spawn(move || -> Result<(), Failed> {
                    for l in 0..loops {
                        let o = output(w.run(&["-d"], &["sleep", "1000"]), bound)?;
                        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
                        check(o.status.code() == Some(0) && id.len() == 64, || {
                            format!("client {c} loop {l}: run -d; {}", show(&o))
                        })?;
                        held.lock().unwrap().insert(id.clone());
                        seen.lock().unwrap().insert(id[..12].to_string());
                        let word = format!("client-{c}-loop-{l}");
                        let e = output(w.hull(&["exec", &id, "echo", &word]), bound)?;
                        check(
                            e.status.code() == Some(0)
                                && String::from_utf8_lossy(&e.stdout) == format!("{word}\n"),
                            || format!("client {c} loop {l}: exec; {}", show(&e)),
                        )?;
                        held.lock().unwrap().remove(&id);
                        let r = output(w.hull(&["rm", "-f", &id]), bound)?;
                        check(r.status.code() == Some(0), || {
                            format!("client {c} loop {l}: rm -f; {}", show(&r))
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (results, checker.join().unwrap())
    });
    let took = t0.elapsed();
    let failures: Vec<String> = client_results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:?}")))
        .collect();
    check(failures.is_empty(), || failures.join("\n"))?;
    let rounds = ps_result.map_err(Failed::from)?;
    eprintln!(
        "{clients} clients x {loops} loops on {backend}: {took:.1?}, ps consistent in {rounds} rounds"
    );
    let last = ps(&w).map_err(Failed::from)?;
    check(last.is_empty(), || {
        format!("containers left in ps: {last:?}")
    })?;
    w.check_nothing_left(&seen.into_inner().unwrap())
}

/// What the ns trials run besides `hull` (which cargo builds for every
/// integration test): the static agent.
pub fn build_runtime() {
    hull_proc::build_static_agent();
}
