//! Harness for VM tests: test targets with `harness = false` that hand their
//! trials to [`run_vm_tests`].
//!
//! - Where /dev/kvm is hardware KVM, or inside the emulated KVM host
//!   (`HULL_IN_KVM_HOST=1`), the trials run here.
//! - With `HULL_SKIP_VM_TESTS=1` every trial is reported as ignored, with why.
//! - Otherwise the whole test binary re-runs itself inside emulated KVM
//!   hosts (`tests/kvm-host/run`): two at once by default
//!   (`HULL_VMTEST_HOSTS`), each given a share of the trials (see
//!   [`plan_hosts`]); one host boot serves every trial of its share.
#![allow(dead_code)] // each test target uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// Also loaded by the scenario suites that share a test binary with this.
#[allow(clippy::duplicate_mod)]
#[path = "hull_proc.rs"]
mod hull_proc;
#[path = "vmtest_hosts.rs"]
mod shards;

pub use libtest_mimic::{Arguments, Failed, Trial};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hardware_kvm() -> bool {
    let m = |n: &str| Path::new("/sys/module").join(n).exists();
    Path::new("/dev/kvm").exists() && !m("kvm_pvm") && (m("kvm_intel") || m("kvm_amd"))
}

/// Runs `trials` where they can run (see the module docs); never returns.
pub fn run_vm_tests(trials: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    let inside = std::env::var_os("HULL_IN_KVM_HOST").is_some();
    if inside || hardware_kvm() {
        libtest_mimic::run(&args, without_done(trials)).exit();
    }
    if std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1") {
        eprintln!("VM tests ignored: HULL_SKIP_VM_TESTS=1 and /dev/kvm here is not hardware KVM");
        let trials = trials
            .into_iter()
            .map(|t| t.with_ignored_flag(true))
            .collect();
        let mut args = args;
        args.ignored = false;
        args.include_ignored = false;
        libtest_mimic::run(&args, trials).exit();
    }
    // --list and similar need no VM.
    if args.list {
        libtest_mimic::run(&args, trials).exit();
    }
    build_binaries();
    let exe = std::env::current_exe().expect("test binary path");
    eprintln!(
        "/dev/kvm here cannot boot a stock Linux guest: running {} inside the emulated KVM host (tests/kvm-host/run; HULL_SKIP_VM_TESTS=1 skips)",
        exe.file_name().unwrap().to_string_lossy()
    );
    // Setting the host up (packages, its kernel) can take minutes and is not
    // a wedge: done first, without the watchdog.
    let prepared = Command::new(repo().join("tests/kvm-host/run"))
        .arg("--prepare")
        .status();
    if !prepared.is_ok_and(|s| s.success()) {
        eprintln!("vmtest: setting up the emulated KVM host failed (tests/kvm-host/run --prepare)");
        std::process::exit(125);
    }
    let plan = shards::plan_hosts(&args, &trials, &suite_name(&exe));
    std::process::exit(shards::run_hosts(&exe, &suite_name(&exe), plan));
}

/// The suite's name: the test binary's without cargo's hash (`net_vm`).
fn suite_name(exe: &Path) -> String {
    let stem = exe.file_name().unwrap_or_default().to_string_lossy();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem.into_owned(),
    }
}

/// Trials named in this variable (comma-separated) are left out: the outer
/// side sets it when it restarts a wedged emulated host, for the trials that
/// already reported.
const SKIP_VAR: &str = "HULL_VMTEST_DONE";

/// The trials one emulated host runs (comma-separated), when the outer
/// side shares a suite between several hosts; unset: all of them.
const ONLY_VAR: &str = "HULL_VMTEST_ONLY";

/// Drops the trials an earlier, wedged host already ran, and those given
/// to another host.
fn without_done(trials: Vec<Trial>) -> Vec<Trial> {
    let done = std::env::var(SKIP_VAR).unwrap_or_default();
    let done: Vec<&str> = done.split(',').filter(|n| !n.is_empty()).collect();
    let only = std::env::var(ONLY_VAR).ok();
    let only: Option<Vec<&str>> = only.as_deref().map(|o| o.split(',').collect());
    trials
        .into_iter()
        .filter(|t| !done.contains(&t.name()))
        .filter(|t| only.as_ref().is_none_or(|o| o.contains(&t.name())))
        .collect()
}

/// How long the emulated host may go without any trial finishing before it
/// counts as wedged on a quiet machine (seconds; `HULL_VMTEST_STALL_SECS`,
/// default 480; scaled by the machine's load, see `hull_proc::patience`).
fn stall_limit() -> std::time::Duration {
    let secs = std::env::var("HULL_VMTEST_STALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(480);
    std::time::Duration::from_secs(secs)
}

/// Attempts at one suite: the emulated host (TCG running nested SVM) now and
/// then wedges (soft lockups of its own vCPUs; the runner then exits 75); it
/// is restarted for the trials that have not reported yet.
const ATTEMPTS: usize = 4;

/// A finished trial in libtest's output: `test NAME ... ok|FAILED|ignored`.
fn finished_trial(line: &str) -> Option<(String, bool)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    let failed = match result.trim() {
        "ok" => false,
        r if r.starts_with("FAILED") => true,
        r if r.starts_with("ignored") => false,
        _ => return None,
    };
    Some((name.trim().to_string(), failed))
}

/// Runs this test binary inside one emulated host (only the trials named in
/// `only`, when given), restarting the host when it wedges; returns the exit
/// status for those trials. Every line the host prints goes to `out`; each
/// trial that runs and reports, with the seconds since the previous report
/// (or since the host's libtest started), to `timed`.
fn run_in_kvm_host(
    exe: &Path,
    only: Option<&[String]>,
    out: &(dyn Fn(String) + Sync),
    timed: &mut Vec<(String, f64)>,
) -> i32 {
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::Instant;
    let mut done: Vec<String> = Vec::new();
    let mut failed = false;
    for attempt in 1..=ATTEMPTS {
        // The machine's load now sets how patient this host's trials are
        // (unless HULL_TEST_PATIENCE is given), and the stall limit with it.
        let patience = hull_proc::patience();
        let stall = stall_limit().mul_f64(patience);
        let mut cmd = Command::new(repo().join("tests/kvm-host/run"));
        cmd.arg("--")
            .arg(exe)
            .args(std::env::args_os().skip(1))
            .env(SKIP_VAR, done.join(","))
            .env(hull_proc::PATIENCE_VAR, format!("{patience:.1}"))
            .stdout(std::process::Stdio::piped());
        if patience > 1.0 {
            eprintln!(
                "vmtest: the machine is loaded: this host's limits for a hang are {patience:.1}x the quiet machine's ({})",
                hull_proc::PATIENCE_VAR
            );
        }
        if let Some(only) = only {
            cmd.env(ONLY_VAR, only.join(","));
        }
        let mut last = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            eprintln!("cannot start tests/kvm-host/run: {e}");
            std::process::exit(101)
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let ended = std::thread::scope(|scope| {
            scope.spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // The host is up and its trials start: what came before
                    // (its boot) is no trial's time.
                    let event = if line.starts_with("running ") {
                        Some(None)
                    } else {
                        finished_trial(&line).map(|(name, failed)| {
                            let ignored = line.contains(" ... ignored");
                            Some((name, failed, ignored))
                        })
                    };
                    out(line);
                    if let Some(e) = event {
                        let _ = tx.send(e);
                    }
                }
            });
            let mut wedged = false;
            loop {
                match rx.recv_timeout(stall) {
                    Ok(None) => last = Instant::now(),
                    Ok(Some((name, f, ignored))) => {
                        failed |= f;
                        if !ignored {
                            timed.push((name.clone(), last.elapsed().as_secs_f64()));
                        }
                        last = Instant::now();
                        done.push(name);
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        wedged = true;
                        eprintln!(
                            "vmtest: no trial finished for {} s: the emulated KVM host is wedged; stopping it",
                            stall.as_secs()
                        );
                        // SIGTERM: the runner stops its QEMU and cleans up.
                        // SAFETY: kill(2) on our own child's pid.
                        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                        break;
                    }
                }
            }
            let status = child.wait().expect("waiting for tests/kvm-host/run");
            (status, wedged)
        });
        let (status, wedged) = ended;
        // 75: the runner saw the host wedge and stopped it.
        let wedged = wedged || status.code() == Some(75);
        while let Ok(event) = rx.try_recv() {
            if let Some((name, f, ignored)) = event {
                failed |= f;
                if !ignored {
                    timed.push((name.clone(), last.elapsed().as_secs_f64()));
                }
                done.push(name);
            }
        }
        if !wedged {
            let code = status.code().unwrap_or(101);
            return if code == 0 && failed { 101 } else { code };
        }
        if attempt < ATTEMPTS {
            eprintln!(
                "vmtest: restarting the emulated host for the trials that did not report (attempt {} of {ATTEMPTS}; {} already reported)",
                attempt + 1,
                done.len()
            );
        }
    }
    eprintln!(
        "vmtest: the emulated KVM host wedged {ATTEMPTS} times; giving up (HULL_VMTEST_STALL_SECS sets the limit)"
    );
    125
}

/// The target dir's profile directory holding the binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/...")
        .to_path_buf()
}

/// Makes sure the workspace binaries the VM tests run (hull-vmm, hull) are
/// built, with the same profile as this test binary (hull: by cargo
/// already, see [`hull_proc::build_vmm`]).
pub fn build_binaries() {
    hull_proc::build_vmm();
}

/// Path of the `hull-vmm` binary.
pub fn hull_vmm() -> PathBuf {
    let p = bin_dir().join("hull-vmm");
    assert!(
        p.exists(),
        "{} is missing: cargo build -p hull-vmm",
        p.display()
    );
    p
}

/// The guest kernel: `$HULL_KERNEL`, or the build script's cache.
pub fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("HULL_KERNEL") {
        return PathBuf::from(k);
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".cache"));
    let k = cache.join("hull/kernel/vmlinux");
    assert!(
        k.exists(),
        "the guest kernel is not built: run guest-kernel/build.sh (or set HULL_KERNEL)"
    );
    k
}

/// An initramfs (newc cpio) with busybox-static and `init` as /init.
pub fn busybox_initramfs(dir: &Path, init: &str) -> PathBuf {
    busybox_initramfs_with(dir, init, &[])
}

/// [`busybox_initramfs`] with `extra` host files put at /NAME.
pub fn busybox_initramfs_with(dir: &Path, init: &str, extra: &[(&Path, &str)]) -> PathBuf {
    let root = dir.join("initramfs");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (src, name) in extra {
        std::fs::copy(src, root.join(name))
            .unwrap_or_else(|e| panic!("copying {} into the initramfs: {e}", src.display()));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static) is needed");
    let script = format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n{init}\n");
    std::fs::write(root.join("init"), script).unwrap();
    let out = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && chmod +x init && find . | cpio -o -H newc --quiet > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .expect("cpio (Debian's cpio package) is needed");
    assert!(status.success(), "building the initramfs failed");
    out
}

/// Output of a finished command as text: (status code, stdout, stderr).
pub fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Turns a boolean check into a trial result with a message.
pub fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

/// A running hull-vmm whose serial console (its stdout) is collected.
pub struct SerialVm {
    child: std::process::Child,
    serial: std::thread::JoinHandle<String>,
}

impl SerialVm {
    /// Starts `cmd` (hull-vmm, or a wrapper running it) with its stdout piped.
    pub fn spawn(mut cmd: Command) -> SerialVm {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("running hull-vmm");
        let mut out = child.stdout.take().expect("piped");
        let serial = std::thread::spawn(move || {
            use std::io::Read;
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        SerialVm { child, serial }
    }

    /// Waits (at most `limit`) for the VM to end: its exit code and serial output.
    pub fn finish(mut self, limit: std::time::Duration) -> (Option<i32>, String) {
        let deadline = std::time::Instant::now() + limit;
        let code = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for hull-vmm") {
                break s.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        (code, self.serial.join().unwrap_or_default())
    }
}

/// The value after `key=` on a guest's serial output.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    let tag = format!("{key}=");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(tag.as_str()))
        .map(str::trim)
}

/// Fails unless the serial output says `key=want`.
pub fn expect_field(out: &str, key: &str, want: &str) -> Result<(), Failed> {
    let got = field(out, key);
    check(got == Some(want), || {
        format!("{key}: expected {want:?}, got {got:?}; serial:\n{out}")
    })
}

/// sha256sum of a file, in hex.
pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
