//! The VMM under attack, through real KVM (directly on hardware KVM, inside
//! tests/kvm-host elsewhere; see tests/support/vmtest.rs):
//! - hostile guests built here (tests/support/hostile_agent.c in place of
//!   hull's agent): garbage frames, a 4 GiB length claim, a guest that never
//!   answers, one that floods the console. `hull run` ends each with exit
//!   125 and one line saying what the guest did, within a bounded time, and
//!   memory stays bounded (the peak RSS wait4 reports for hull: the largest
//!   of hull and the processes it reaped);
//! - the seccomp test hook (HULL_VMM_TEST_FORBIDDEN_SYSCALL): a device or
//!   vCPU thread makes a forbidden call, hull-vmm dies of SIGSYS, and hull
//!   says "hull-vmm was killed by its seccomp filter (syscall N)", exits 125
//!   and records the container as exited;
//! - a jailed VMM (the default) seen from the host: an unprivileged uid, no
//!   capabilities, NoNewPrivs 1, Seccomp 2, a mount namespace with only the
//!   jail's files, a cgroup with the stated limits; and its waiter (the
//!   hull-vmm process outside the VMM's pid namespace): the same ids, no
//!   capabilities, NoNewPrivs 1, Seccomp 2, the jail's mount namespace, no
//!   files beyond stdio.

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/vmtest.rs"]
mod vmtest;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmtest::{Failed, Trial, check};

/// How long a hostile guest's run may take, all told (boot in the emulated
/// host included); the agent has `ANSWER_SECS` to answer.
const LIMIT: Duration = Duration::from_secs(120);
const ANSWER_SECS: &str = "10";
/// hull's peak RSS must stay below this whatever the guest does.
const MAX_RSS_KIB: i64 = 64 * 1024;

fn hostile_agent(mode: u32) -> PathBuf {
    vmtest::bin_dir().join(format!("hostile_agent_{mode}"))
}

fn build_hostile_agents() {
    let src = vmtest::repo().join("tests/support/hostile_agent.c");
    for mode in 1..=4 {
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", &format!("-DMODE={mode}"), "-o"])
            .arg(hostile_agent(mode))
            .arg(&src)
            .status()
            .expect("gcc (and Debian's libc6-dev) is needed to build the hostile agent");
        assert!(status.success(), "building {} failed", src.display());
    }
}

fn rootfs() -> &'static Path {
    busybox::shared_rootfs()
}

struct Run {
    code: Option<i32>,
    stderr: String,
    took: Duration,
    /// Peak RSS (KiB) of hull or of a process it waited for, from wait4.
    max_rss_kib: i64,
}

/// `hull run --isolation vm --rootfs R true` with `env`, waited for with
/// wait4 (for hull's peak RSS); killed after LIMIT.
fn hull_run(state: &Path, env: &[(&str, &Path)]) -> Result<Run, Failed> {
    let mut cmd = Command::new(vmtest::bin_dir().join("hull"));
    cmd.arg("--state-dir")
        .arg(state)
        .args(["run", "--isolation", "vm", "--memory", "128", "--rootfs"])
        .arg(rootfs())
        .arg("true")
        .env("HULL_NETWORK", "none")
        .env("HULL_AGENT_ANSWER_SECS", ANSWER_SECS)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting hull: {e}"))?;
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let (status, rss) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our child; status and ru are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break (status, ru.ru_maxrss);
        }
        if t.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("hull run still running after {LIMIT:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Run {
        code,
        stderr: reader.join().unwrap_or_default(),
        took: t.elapsed(),
        max_rss_kib: rss,
    })
}

/// stderr's lines but the progress line of a first run that makes the
/// microVM template (these runs restore one, as `hull run` does by default).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("hull: making the microVM template"))
        .collect()
}

/// Exit 125 and exactly one line on stderr, containing `want`.
fn one_line_125(run: &Run, want: &str) -> Result<(), Failed> {
    let lines = error_lines(&run.stderr);
    check(
        run.code == Some(125) && lines.len() == 1 && lines[0].contains(want),
        || {
            format!(
                "want exit 125 and one line with {want:?}; exit {:?} after {:?}, stderr:\n{}",
                run.code, run.took, run.stderr
            )
        },
    )?;
    check(run.max_rss_kib < MAX_RSS_KIB, || {
        format!(
            "hull's peak RSS was {} KiB (limit {MAX_RSS_KIB})",
            run.max_rss_kib
        )
    })?;
    eprintln!(
        "{want:?}: {:?}, hull peak RSS {} KiB",
        run.took, run.max_rss_kib
    );
    Ok(())
}

fn hostile(mode: u32, want: &'static str) -> Result<(), Failed> {
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let agent = hostile_agent(mode);
    // A cold boot: no template of a hostile init (making one would count the
    // template's hull-vmm, which writes out guest memory, in the peak RSS).
    let run = hull_run(
        state.path(),
        &[("HULL_AGENT", &agent), ("HULL_COLD_BOOT", Path::new("1"))],
    )?;
    one_line_125(&run, want)
}

fn seccomp_hook(thread: &'static str) -> Result<(), Failed> {
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let run = hull_run(
        state.path(),
        &[("HULL_VMM_TEST_FORBIDDEN_SYSCALL", Path::new(thread))],
    )?;
    // hull_vmm::seccomp::FORBIDDEN_FOR_TESTS is getppid.
    let want = format!(
        "hull-vmm was killed by its seccomp filter (syscall {})",
        libc::SYS_getppid
    );
    let lines = error_lines(&run.stderr);
    check(
        run.code == Some(125) && lines.len() == 1 && lines[0].contains(&want),
        || format!("exit {:?}, stderr:\n{}", run.code, run.stderr),
    )?;
    // The container is recorded as exited, with the reason.
    let ps = Command::new(vmtest::bin_dir().join("hull"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["ps", "-a"])
        .output()
        .map_err(|e| e.to_string())?;
    let ps = String::from_utf8_lossy(&ps.stdout);
    check(ps.contains("Exited (125)"), || format!("hull ps -a:\n{ps}"))
}

/// A field of /proc/PID/status, trimmed.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A running jailed VMM, seen from the host: its uid, capabilities,
/// no_new_privs, seccomp, mounts and cgroup limits.
fn jailed_vmm_is_confined() -> Result<(), Failed> {
    let state = tempfile::tempdir().map_err(|e| e.to_string())?;
    let hull = |args: &[&str]| {
        Command::new(vmtest::bin_dir().join("hull"))
            .env("HULL_NETWORK", "none")
            .arg("--state-dir")
            .arg(state.path())
            .args(args)
            .output()
            .map_err(|e| format!("running hull: {e}"))
    };
    let root = rootfs().to_str().ok_or("rootfs path")?;
    let out = hull(&[
        "run",
        "-d",
        "--name",
        "j",
        "--isolation",
        "vm",
        "--memory",
        "128",
        "--cpus",
        "1",
        "--rootfs",
        root,
        "sleep",
        "60",
    ])?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let result: Result<(), Failed> = (|| {
        check(out.status.success() && !id.is_empty(), || {
            format!("hull run -d: {}", String::from_utf8_lossy(&out.stderr))
        })?;
        let dir = state.path().join("containers").join(&id);
        let pid: u32 = std::fs::read_to_string(dir.join("jail/vmm.pid"))
            .map_err(|e| format!("jail/vmm.pid: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("jail/vmm.pid: {e}"))?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let status = std::fs::read_to_string(proc.join("status")).map_err(|e| e.to_string())?;
        let uid = status_field(&status, "Uid");
        let first_uid: u32 = uid
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        check(
            first_uid >= 65536 && uid.split_whitespace().all(|u| u == first_uid.to_string()),
            || format!("Uid: {uid}"),
        )?;
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let v = status_field(&status, cap);
            check(v == "0000000000000000", || format!("{cap}: {v}"))?;
        }
        check(status_field(&status, "NoNewPrivs") == "1", || {
            status.clone()
        })?;
        check(status_field(&status, "Seccomp") == "2", || status.clone())?;
        // Its waiter (the parent outside its pid namespace): the same
        // unprivileged ids, nothing else either, its own filter, and the
        // jail's mount namespace.
        let waiter = status_field(&status, "PPid");
        let wproc = PathBuf::from(format!("/proc/{waiter}"));
        let wstatus = std::fs::read_to_string(wproc.join("status"))
            .map_err(|e| format!("the waiter {waiter}: {e}"))?;
        for f in ["Uid", "Gid"] {
            check(
                status_field(&wstatus, f) == status_field(&status, f),
                || format!("waiter's {f} is not the VMM's:\n{wstatus}"),
            )?;
        }
        for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            check(status_field(&wstatus, f) == "0000000000000000", || {
                format!("waiter's {f}:\n{wstatus}")
            })?;
        }
        check(
            status_field(&wstatus, "Groups").is_empty()
                && status_field(&wstatus, "NoNewPrivs") == "1"
                && status_field(&wstatus, "Seccomp") == "2",
            || format!("the waiter:\n{wstatus}"),
        )?;
        let ns = |p: &Path| std::fs::read_link(p.join("ns/mnt")).map_err(|e| e.to_string());
        check(ns(&wproc)? == ns(&proc)?, || {
            "the waiter is not in the VMM's mount namespace".to_string()
        })?;
        let fds = std::fs::read_dir(wproc.join("fd"))
            .map_err(|e| e.to_string())?
            .count();
        check(fds <= 3, || format!("the waiter holds {fds} files"))?;
        // Its mount namespace: the jail's tmpfs root and what it put there.
        let mounts = std::fs::read_to_string(proc.join("mountinfo")).map_err(|e| e.to_string())?;
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect();
        points.sort_unstable();
        check(
            points == ["/", "/disk0", "/initrd", "/kernel", "/run"],
            || format!("mount points {points:?}:\n{mounts}"),
        )?;
        let names: Vec<String> = std::fs::read_dir(proc.join("root"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        let mut names = names;
        names.sort();
        check(names == ["dev", "disk0", "initrd", "kernel", "run"], || {
            format!("the jail's / holds {names:?}")
        })?;
        // Its cgroup (v2 in the emulated host): guest RAM + 128 MiB, 64
        // pids, one CPU.
        let cg = std::fs::read_to_string(proc.join("cgroup")).map_err(|e| e.to_string())?;
        let path = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| format!("no cgroup v2 line in {cg}"))?;
        let cgdir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(cgdir.join(f)).unwrap_or_default();
        check(
            read("memory.max").trim() == ((128u64 + 128) << 20).to_string(),
            || format!("memory.max {:?} in {}", read("memory.max"), cgdir.display()),
        )?;
        check(read("pids.max").trim() == "64", || {
            format!("pids.max {:?}", read("pids.max"))
        })?;
        check(read("cpu.max").trim() == "100000 100000", || {
            format!("cpu.max {:?}", read("cpu.max"))
        })?;
        Ok(())
    })();
    let rm = hull(&["rm", "-f", "j"])?;
    result?;
    check(rm.status.success(), || {
        format!("hull rm -f: {}", String::from_utf8_lossy(&rm.stderr))
    })
}

fn main() {
    let inside = std::env::var_os("HULL_IN_KVM_HOST").is_some();
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if !inside && !listing && !skipping {
        vmtest::build_binaries();
        build_hostile_agents();
    }
    let trials = vec![
        Trial::test("hostile_guest_garbage_frame", || {
            hostile(1, "unknown frame kind")
        }),
        Trial::test("hostile_guest_4gib_frame", || {
            hostile(2, "frame of 4294967295 bytes is larger than")
        }),
        Trial::test("hostile_guest_never_answers", || {
            hostile(3, "the agent sent no hello within 10 s")
        }),
        Trial::test("hostile_guest_floods_the_console", || {
            hostile(4, "the agent sent no hello within 10 s")
        }),
        Trial::test("seccomp_hook_on_the_device_thread", || {
            seccomp_hook("device")
        }),
        Trial::test("seccomp_hook_on_a_vcpu_thread", || seccomp_hook("vcpu")),
        Trial::test("jailed_vmm_is_confined", jailed_vmm_is_confined),
    ];
    vmtest::run_vm_tests(trials);
}
