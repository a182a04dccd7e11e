//! One scenario suite for `hull run`, run against each isolation backend
//! (tests/run_ns.rs on the host, tests/run_vm.rs through real KVM): the same
//! commands, the same observable behaviour a user relies on.
#![allow(dead_code)] // each test target uses its own subset

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

#[path = "busybox.rs"]
pub mod busybox;
#[path = "captured.rs"]
pub mod captured;
#[path = "hull_proc.rs"]
pub mod hull_proc;

pub use hull_proc::{hull_bin, patient, processes_mentioning};
#[path = "volume_scenarios.rs"]
pub mod volume_scenarios;

/// How long any one `hull run` may take on a quiet machine before the test
/// calls it a hang (a microVM boot under the emulated KVM host takes
/// seconds); scaled by the machine's load ([`hang`]).
const HANG: Duration = Duration::from_secs(180);

/// [`HANG`] for this machine now (see `hull_proc::patience`).
fn hang() -> Duration {
    patient(HANG)
}

/// Builds what `hull run` needs besides `hull` itself: `hull-vmm` and the
/// static agent (agent/build-static.sh).
pub fn build_runtime() {
    hull_proc::build_vmm();
    hull_proc::build_static_agent();
}

/// The busybox rootfs every scenario runs, built once per test binary.
fn rootfs() -> &'static Path {
    busybox::shared_rootfs()
}

/// One backend's view of the suite.
/// `vm`, `ns`, or `vm-cold`: `--isolation vm --cold-boot` (a microVM
/// booted instead of restored from the template).
#[derive(Clone, Copy)]
pub struct Backend(pub &'static str);

impl Backend {
    fn isolation(self) -> &'static str {
        if self.0 == "vm-cold" { "vm" } else { self.0 }
    }

    fn run_flags(self) -> &'static [&'static str] {
        if self.0 == "vm-cold" {
            &["--cold-boot"]
        } else {
            &[]
        }
    }
}

/// A state dir of its own for each scenario.
struct Ctx {
    backend: Backend,
    state: tempfile::TempDir,
}

impl Ctx {
    fn new(backend: Backend) -> Ctx {
        Ctx {
            backend,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// `hull --state-dir S run --isolation B --rootfs R <flags> <cmd>`, with
    /// no network (HULL_NETWORK=none): `run` defaults to the bridge network,
    /// which this suite must not build on the machine's own network (the
    /// network suites run hull in network namespaces of their own).
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(hull_bin());
        c.arg("--state-dir")
            .arg(self.state.path())
            .env("HULL_NETWORK", "none")
            .args(["run", "--isolation", self.backend.isolation()])
            .args(self.backend.run_flags())
            .arg("--rootfs")
            .arg(rootfs())
            .args(flags)
            .args(cmd);
        hull_proc::answer_patiently(&mut c);
        c
    }

    fn hull(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hull_bin());
        c.arg("--state-dir")
            .arg(self.state.path())
            .env("HULL_NETWORK", "none")
            .args(args);
        hull_proc::answer_patiently(&mut c);
        c
    }

    /// Containers left in the state dir.
    fn containers(&self) -> Vec<String> {
        hull_proc::containers_in(self.state.path())
    }
}

struct Out {
    code: Option<i32>,
    /// The signal that ended it, if one did.
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} (signal {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.signal, self.stdout, self.stderr
        )
    }
}

/// Runs to the end with `input` on stdin; a hang is a failure, not a stuck test.
fn output(mut cmd: Command, input: &[u8]) -> Result<(Out, Vec<u8>), Failed> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting hull: {e}"))?;
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let out = wait_output(child, hang())?;
    let _ = feeder.join();
    let stdout = out.stdout.clone();
    Ok((
        Out {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        stdout,
    ))
}

fn run_text(cmd: Command) -> Result<Out, Failed> {
    output(cmd, b"").map(|(o, _)| o)
}

/// Collects a child's output, killing it (and failing) after `limit`.
fn wait_output(child: Child, limit: Duration) -> Result<Output, Failed> {
    let (out, hung) =
        hull_proc::wait_within(child, limit).map_err(|e| format!("waiting for hull: {e}"))?;
    if hung {
        return Err(format!("hull hung: killed after {}s", limit.as_secs()).into());
    }
    Ok(out)
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

// --- scenarios -----------------------------------------------------------

fn output_and_exit_code(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["--rm"], &["sh", "-c", "echo out; echo err >&2; exit 3"]))?;
    check(o.code == Some(3), || format!("want exit 3; {o}"))?;
    check(o.stdout == "out\n", || {
        format!("stdout must be exactly out; {o}")
    })?;
    check(
        o.stderr.contains("err") && !o.stdout.contains("err"),
        || format!("stderr must carry err; {o}"),
    )?;
    check(c.containers().is_empty(), || {
        format!("--rm left state behind: {:?}", c.containers())
    })
}

fn stdin_round_trip(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    // 10 MiB that compresses badly and has every byte value.
    let mut data = Vec::with_capacity(10 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 10 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let (o, got) = output(c.run(&["--rm", "-i"], &["cat"]), &data)?;
    check(o.code == Some(0), || {
        format!("cat failed: exit {:?}, stderr {}", o.code, o.stderr)
    })?;
    check(got.len() == data.len(), || {
        format!("sent {} bytes, got {} back", data.len(), got.len())
    })?;
    check(got == data, || "the bytes that came back differ".into())
}

fn env_cwd_user_hostname(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(
        &[
            "--rm",
            "-e",
            "GREETING=hello world",
            "-w",
            "/home/user",
            "-u",
            "user",
            "--hostname",
            "box1",
        ],
        &[
            "sh",
            "-c",
            "echo \"g=$GREETING\"; pwd; id; hostname; echo \"home=$HOME\"",
        ],
    ))?;
    check(o.code == Some(0), || format!("{o}"))?;
    let want = [
        "g=hello world",
        "/home/user",
        "uid=1000(user) gid=1000(user) groups=1000(user),2000(extra)",
        "box1",
        "home=/home/user",
    ];
    let lines: Vec<&str> = o.stdout.lines().collect();
    check(lines == want, || format!("want {want:?}; {o}"))?;
    // A numeric user with a group, and the default hostname (the short id).
    let o = run_text(c.run(
        &["--rm", "-u", "1000:0"],
        &["sh", "-c", "id -u; id -g; hostname"],
    ))?;
    let lines: Vec<&str> = o.stdout.lines().collect();
    check(
        lines.len() == 3 && lines[0] == "1000" && lines[1] == "0",
        || format!("want uid 1000 gid 0; {o}"),
    )?;
    check(
        lines[2].len() == 12 && lines[2].chars().all(|c| c.is_ascii_hexdigit()),
        || format!("default hostname should be the 12-digit short id; {o}"),
    )
}

fn unknown_user_is_one_line(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["--rm", "-u", "nobody-here"], &["true"]))?;
    check(o.code == Some(125), || format!("want 125; {o}"))?;
    // The notice of a template being made (the host's first microVM since
    // the agent changed) is not part of the error.
    let lines = o
        .stderr
        .trim()
        .lines()
        .filter(|l| !l.starts_with("hull: making the microVM template"))
        .count();
    check(lines == 1 && o.stderr.contains("nobody-here"), || {
        format!("want one line naming the user; {o}")
    })
}

fn missing_command_127(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["--rm"], &["no-such-command", "x"]))?;
    check(o.code == Some(127), || format!("want 127; {o}"))?;
    check(
        o.stderr.contains("no-such-command") && o.stderr.contains("not found"),
        || format!("want a message naming the command; {o}"),
    )?;
    let o = run_text(c.run(&["--rm"], &["/etc/passwd"]))?;
    check(o.code == Some(126), || {
        format!("not executable: want 126; {o}")
    })
}

fn sigterm_exits_143(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let mut child = c
        .run(&["--rm"], &["sh", "-c", "echo ready; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&seen).contains("ready") {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => {
                let out = wait_output(child, hang())?;
                return Err(format!(
                    "the container ended before it was ready: {:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    // SAFETY: kill(2) of the hull process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let out = wait_output(child, hang())?;
    check(out.status.code() == Some(143), || {
        format!(
            "want 143 after SIGTERM, got {:?} after {:?}: {}",
            out.status,
            t.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    check(c.containers().is_empty(), || {
        format!("--rm left state behind: {:?}", c.containers())
    })
}

fn proc_shows_only_the_container(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    // Every user-space process (kernel threads have no command line): pid and
    // command line. Only the agent (pid 1) and this shell's own may show.
    let script = "for p in /proc/[0-9]*; do a=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); \
                  [ -n \"$a\" ] && echo \"${p#/proc/} $a\"; done; echo self=$$";
    let o = run_text(c.run(&["--rm"], &["sh", "-c", script]))?;
    check(o.code == Some(0), || format!("{o}"))?;
    let me = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("self="))
        .ok_or_else(|| format!("no self= line; {o}"))?
        .to_string();
    for line in o.stdout.lines().filter(|l| !l.starts_with("self=")) {
        let (pid, args) = line.split_once(' ').unwrap_or((line, ""));
        // pid 1 is the agent (in the VM the kernel runs it as /init).
        let ok = pid == "1" || pid == me || args.starts_with("tr ") || args.starts_with("sh -c");
        check(ok, || {
            format!("a process that is not the container's: {line:?}; {o}")
        })?;
    }
    check(o.stdout.lines().any(|l| l.starts_with("1 ")), || {
        format!("the agent should be pid 1; {o}")
    })
}

fn out_of_memory_is_reported(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    // The string doubles until the container's memory runs out.
    let o = run_text(c.run(
        &["--rm", "--memory", "96"],
        &["sh", "-c", "x=0123456789abcdef; while :; do x=$x$x; done"],
    ))?;
    check(o.code == Some(137), || {
        format!("want 137 (SIGKILL by the OOM killer); {o}")
    })?;
    check(o.stderr.contains("out of memory"), || {
        format!("the reason must be on stderr; {o}")
    })
}

fn bad_memory_size(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["--memory", "lots"], &["true"]))?;
    check(o.code == Some(125), || format!("want 125; {o}"))?;
    check(o.stderr.contains("invalid memory size"), || format!("{o}"))?;
    check(c.containers().is_empty(), || {
        "a bad flag created a container".into()
    })
}

fn kept_until_rm(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["--name", "keep"], &["sh", "-c", "echo kept; exit 7"]))?;
    check(o.code == Some(7), || format!("{o}"))?;
    let ps = run_text(c.hull(&["ps", "-a", "--json"]))?;
    check(
        ps.stdout.contains("\"keep\"") && ps.stdout.contains("exited"),
        || format!("ps -a must list the exited container; {ps}"),
    )?;
    let logs = run_text(c.hull(&["logs", "keep"]))?;
    check(logs.stdout == "kept\n", || {
        format!("logs must replay stdout; {logs}")
    })?;
    let rm = run_text(c.hull(&["rm", "keep"]))?;
    check(rm.code == Some(0), || format!("{rm}"))?;
    check(c.containers().is_empty(), || {
        format!("rm left state behind: {:?}", c.containers())
    })
}

fn mounts() -> std::collections::BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        // Fields after the mount id and parent id: what is mounted where.
        .map(|l| l.split(' ').skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// The mounts there now and not in `before` that are this trial's: under
/// one of `own` (its state dir, its shares). The other trials of the binary
/// run at the same time and mount their own containers' (a netns, a root).
fn mounts_left(before: &std::collections::BTreeSet<String>, own: &[&Path]) -> Vec<String> {
    let own: Vec<String> = own.iter().map(|p| p.display().to_string()).collect();
    mounts()
        .difference(before)
        .filter(|m| own.iter().any(|o| m.contains(o.as_str())))
        .cloned()
        .collect()
}

/// `run -d` prints the id; `exec` sees what the main process wrote and gets
/// its own stdin and exit status; `stop` ends it with SIGTERM (143).
fn detach_exec_stop(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(
        &["-d", "--name", "svc"],
        &[
            "sh",
            "-c",
            "echo written > /tmp/shared; echo main-out; exec sleep 1000",
        ],
    ))?;
    check(o.code == Some(0), || format!("run -d failed; {o}"))?;
    let id = o.stdout.trim().to_string();
    check(
        id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()),
        || format!("run -d must print the 64-digit id; {o}"),
    )?;
    let ps = run_text(c.hull(&["ps", "--json"]))?;
    check(
        ps.stdout.contains(&id) && ps.stdout.contains("running"),
        || format!("ps must list it running; {ps}"),
    )?;
    // `run -d` returns once sh has started, maybe before its first echo:
    // main-out in the logs says /tmp/shared is written too.
    let logs = logs_once_they_hold(&c, "svc", "main-out")?;
    check(logs.stdout == "main-out\n", || {
        format!("logs of a detached container; {logs}")
    })?;
    let e = run_text(c.hull(&["exec", &id[..8], "cat", "/tmp/shared"]))?;
    check(e.code == Some(0) && e.stdout == "written\n", || {
        format!("exec must see the main process's file; {e}")
    })?;
    let (e, got) = output(
        c.hull(&["exec", "-i", "svc", "sh", "-c", "cat; exit 4"]),
        b"through exec\n",
    )?;
    check(e.code == Some(4) && got == b"through exec\n", || {
        format!("exec -i must relay stdin and the status; {e}")
    })?;
    let e = run_text(c.hull(&["exec", "svc", "no-such-tool"]))?;
    check(e.code == Some(127), || {
        format!("exec of a missing command: 127; {e}")
    })?;
    let logs = run_text(c.hull(&["logs", "svc"]))?;
    check(logs.stdout == "main-out\n", || {
        format!("logs of a detached container, after the execs; {logs}")
    })?;
    let st = run_text(c.hull(&["stop", "-t", "30", "svc"]))?;
    check(st.code == Some(0), || format!("{st}"))?;
    let ins = run_text(c.hull(&["inspect", "svc"]))?;
    check(ins.stdout.contains("\"exit_code\": 143"), || {
        format!("stop must end it with SIGTERM (143); {ins}")
    })?;
    let e = run_text(c.hull(&["exec", "svc", "true"]))?;
    check(
        e.code == Some(125) && e.stderr.contains("not running"),
        || format!("exec in a stopped container; {e}"),
    )
}

/// `hull logs NAME` once its stdout holds `want` (polled: a detached
/// container's output reaches its log a moment after `run -d` returns).
fn logs_once_they_hold(c: &Ctx, name: &str, want: &str) -> Result<Out, Failed> {
    let deadline = Instant::now() + hang();
    loop {
        let logs = run_text(c.hull(&["logs", name]))?;
        if logs.stdout.contains(want) || Instant::now() >= deadline {
            return Ok(logs);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `stop -t 1` of a process that ignores SIGTERM kills it after a second.
fn stop_times_out_into_kill(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(
        &["-d", "--name", "stubborn"],
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ],
    ))?;
    check(o.code == Some(0), || format!("{o}"))?;
    // `run -d` returns once sh has started, maybe before it set the trap.
    let logs = logs_once_they_hold(&c, "stubborn", "ready")?;
    check(logs.stdout.contains("ready"), || {
        format!("the container never said it ignores SIGTERM; {logs}")
    })?;
    let t = Instant::now();
    let st = run_text(c.hull(&["stop", "-t", "1", "stubborn"]))?;
    let took = t.elapsed();
    check(st.code == Some(0), || format!("{st}"))?;
    check(took >= Duration::from_secs(1), || {
        format!("stop returned after {took:?}, before its timeout")
    })?;
    let ins = run_text(c.hull(&["inspect", "stubborn"]))?;
    check(
        ins.stdout.contains("\"exit_code\": 137") && ins.stdout.contains("\"exited\""),
        || format!("a stop that times out kills (137); {ins}"),
    )
}

/// The cgroup directories an ns container recorded in its cgroup.json.
fn cgroup_dirs(cdir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(cdir.join("cgroup.json"))
        .ok()
        .and_then(|j| {
            let v: serde_json::Value = serde_json::from_str(&j).ok()?;
            Some(
                v["dirs"]
                    .as_array()?
                    .iter()
                    .filter_map(|d| d.as_str().map(PathBuf::from))
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// `rm -f` of a running container leaves nothing: no process, mount,
/// cgroup or state.
fn rm_force_leaves_nothing(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let mounts_before = mounts();
    let o = run_text(c.run(&["-d"], &["sleep", "1000"]))?;
    check(o.code == Some(0), || format!("{o}"))?;
    let id = o.stdout.trim().to_string();
    let cdir = c.state.path().join("containers").join(&id);
    check(!processes_mentioning(&id).is_empty(), || {
        "no process of the running container found by its id".into()
    })?;
    let cgroups = cgroup_dirs(&cdir);
    check(b.0 != "ns" || !cgroups.is_empty(), || {
        "the ns container recorded no cgroup".into()
    })?;
    let rm = run_text(c.hull(&["rm", "-f", &id[..12]]))?;
    check(rm.code == Some(0), || format!("{rm}"))?;
    let left = processes_mentioning(&id);
    check(left.is_empty(), || format!("processes left: {left:?}"))?;
    check(!cdir.exists() && c.containers().is_empty(), || {
        format!("state left: {:?}", c.containers())
    })?;
    let left: Vec<_> = cgroups.iter().filter(|d| d.exists()).collect();
    check(left.is_empty(), || format!("cgroups left: {left:?}"))?;
    let new = mounts_left(&mounts_before, &[c.state.path()]);
    check(new.is_empty(), || format!("mounts left: {new:?}"))
}

/// A sandbox process (hull-vmm, or the ns agent) killed from outside: the
/// container shows as exited with the reason, and `rm` still cleans up.
fn killed_sandbox_shows_the_reason(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(&["-d", "--name", "victim"], &["sleep", "1000"]))?;
    check(o.code == Some(0), || format!("{o}"))?;
    let ins = run_text(c.hull(&["inspect", "victim"]))?;
    let v: serde_json::Value = serde_json::from_str(&ins.stdout)
        .map_err(|e| format!("inspect is not JSON ({e}): {ins}"))?;
    let v = if v.is_array() { v[0].clone() } else { v };
    let pid = v["sandbox"]["pid"]
        .as_i64()
        .ok_or_else(|| format!("no sandbox pid in inspect: {ins}"))?;
    // SAFETY: kill(2) on the sandbox process this test started through hull.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ins = loop {
        let ins = run_text(c.hull(&["inspect", "victim"]))?;
        if ins.stdout.contains("\"exited\"") || std::time::Instant::now() > deadline {
            break ins;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    check(ins.stdout.contains("died unexpectedly"), || {
        format!("a killed sandbox must show as exited with the reason; {ins}")
    })?;
    let rm = run_text(c.hull(&["rm", "victim"]))?;
    check(rm.code == Some(0) && c.containers().is_empty(), || {
        format!("rm after the sandbox died; {rm}")
    })
}

/// A pseudo-terminal: the test holds the master, hull gets the slave as its
/// controlling terminal.
struct Pty {
    master: std::fs::File,
}

fn openpty(rows: u16, cols: u16) -> Result<(Pty, OwnedFd), Failed> {
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the integers; the winsize is valid.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    if r != 0 {
        return Err(format!("openpty: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: openpty returned two new fds that we now own.
    let (master, slave) = unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    Ok((Pty { master }, slave))
}

impl Pty {
    /// Reads until `want` appears in what came since the last call.
    fn expect(&mut self, seen: &mut String, want: &str) -> Result<(), Failed> {
        let deadline = Instant::now() + hang();
        let fd = self.master.as_raw_fd();
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 200) };
            if Instant::now() > deadline {
                return Err(format!("{want:?} never appeared on the terminal: {seen:?}").into());
            }
            if r <= 0 {
                continue;
            }
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => {
                    return Err(format!("terminal closed before {want:?}: {seen:?}").into());
                }
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        let at = seen.find(want).unwrap_or(0) + want.len();
        seen.drain(..at);
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one valid winsize.
        unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

fn terminal(b: Backend) -> Result<(), Failed> {
    use std::os::unix::process::CommandExt;
    let c = Ctx::new(b);
    let (mut pty, slave) = openpty(30, 100)?;
    let mut cmd = c.run(&["--rm", "-i", "-t", "-e", "PS1=hull-prompt# "], &["sh"]);
    let s = |f: &OwnedFd| f.try_clone().map(Stdio::from);
    cmd.stdin(s(&slave)?).stdout(s(&slave)?).stderr(s(&slave)?);
    // SAFETY: setsid and TIOCSCTTY in the child before exec: async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(slave);
    let result = (|| -> Result<(), Failed> {
        let mut seen = String::new();
        pty.expect(&mut seen, "hull-prompt# ")?;
        pty.master.write_all(b"echo typed-$((6*7))\r")?;
        // Echoed as typed, then run.
        pty.expect(&mut seen, "echo typed-$((6*7))")?;
        pty.expect(&mut seen, "typed-42")?;
        pty.master.write_all(b"stty size\r")?;
        pty.expect(&mut seen, "30 100")?;
        pty.resize(40, 120);
        std::thread::sleep(Duration::from_millis(500));
        pty.master.write_all(b"stty size\r")?;
        pty.expect(&mut seen, "40 120")?;
        pty.master.write_all(b"exit 5\r")?;
        Ok(())
    })();
    let deadline = Instant::now() + hang();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        // Keep draining the terminal so hull never blocks writing to it.
        let mut buf = [0u8; 4096];
        let mut p = libc::pollfd {
            fd: pty.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 50) } > 0 {
            let _ = pty.master.read(&mut buf);
        }
    };
    result?;
    check(status.and_then(|s| s.code()) == Some(5), || {
        format!("`exit 5` in the terminal should end hull with 5, got {status:?}")
    })
}

// --- user namespaces (ns only) -------------------------------------------

/// `cat /proc/self/uid_map` in the container, as (inside, host, count).
fn uid_map(out: &str) -> Option<(u64, u64, u64)> {
    let f: Vec<u64> = out
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 3).then(|| (f[0], f[1], f[2]))
}

/// The pids in a container's cgroup.
fn cgroup_pids(cdir: &Path) -> Vec<u32> {
    cgroup_dirs(cdir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The real uid of a host process.
fn host_uid(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Each container's root is a host id of its own (two at once differ),
/// unprivileged on the host: its processes run under it there, it cannot
/// make device nodes, and yet the image's files are root's inside and root
/// can write them. After rm its claim on the range is gone.
fn userns_root_is_an_unprivileged_host_id(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let mut bases = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let o = run_text(c.run(&["-d"], &["sleep", "1000"]))?;
        check(o.code == Some(0), || format!("{o}"))?;
        let id = o.stdout.trim().to_string();
        let e = run_text(c.hull(&["exec", &id, "cat", "/proc/self/uid_map"]))?;
        let map = uid_map(&e.stdout);
        check(
            matches!(map, Some((0, base, 65536)) if base >= 65536),
            || format!("container root must map to a range of 65536 host ids of its own; {e}"),
        )?;
        let base = map.map(|m| m.1).unwrap_or_default();
        let ins = run_text(c.hull(&["inspect", &id]))?;
        check(ins.stdout.contains(&format!("\"0:{base}:65536\"")), || {
            format!("inspect must show the id map 0:{base}:65536; {ins}")
        })?;
        let cdir = c.state.path().join("containers").join(&id);
        let pids = cgroup_pids(&cdir);
        let uids: Vec<_> = pids.iter().map(|&p| host_uid(p)).collect();
        check(
            !pids.is_empty() && uids.iter().all(|u| *u == Some(base)),
            || {
                format!(
                    "on the host every process of the container must run as uid {base}: pids {pids:?}, uids {uids:?}"
                )
            },
        )?;
        bases.push(base);
        ids.push(id);
    }
    check(bases[0] != bases[1], || {
        format!("two containers share the host ids {}", bases[0])
    })?;
    let e = run_text(c.hull(&["exec", &ids[0], "mknod", "/tmp/null", "c", "1", "3"]))?;
    check(
        e.code != Some(0) && e.stderr.contains("not permitted"),
        || format!("root in a user namespace must not make device nodes; {e}"),
    )?;
    let e = run_text(c.hull(&[
        "exec",
        &ids[0],
        "sh",
        "-c",
        "stat -c %u:%g /bin/busybox && echo x > /etc/hull-new && stat -c %u:%g /etc/hull-new",
    ]))?;
    check(e.code == Some(0) && e.stdout == "0:0\n0:0\n", || {
        format!("the image's files must be root's inside, and root must write them; {e}")
    })?;
    for id in &ids {
        let cdir = c.state.path().join("containers").join(id);
        let record = std::fs::read_to_string(cdir.join("userns.json")).unwrap_or_default();
        let slot: Option<u64> = serde_json::from_str::<serde_json::Value>(&record)
            .ok()
            .and_then(|v| v["slot"].as_u64());
        check(slot.is_some(), || {
            format!("the container recorded no id range: {record:?}")
        })?;
        let rm = run_text(c.hull(&["rm", "-f", id]))?;
        check(rm.code == Some(0), || format!("{rm}"))?;
        let pool = std::env::var_os("HULL_USERNS_DIR")
            .map_or_else(|| PathBuf::from("/run/hull-userns"), PathBuf::from);
        let claim = pool.join(slot.unwrap_or_default().to_string());
        // Another container may hold the range by now, but not this one.
        let holder = std::fs::read_to_string(&claim).unwrap_or_default();
        check(!holder.contains(id.as_str()), || {
            format!("{} still claims its id range {}", id, claim.display())
        })?;
    }
    Ok(())
}

/// `--userns host` shares the host's ids (root is root); `--userns private`
/// insists on a range of its own; ranges run out with a clear error and
/// come back with rm.
fn userns_modes(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(c.run(
        &["--rm", "--userns", "host"],
        &["cat", "/proc/self/uid_map"],
    ))?;
    check(uid_map(&o.stdout) == Some((0, 0, 4294967295)), || {
        format!("--userns host must keep the host's ids; {o}")
    })?;
    let o = run_text(c.run(
        &["--rm", "--userns", "private"],
        &["cat", "/proc/self/uid_map"],
    ))?;
    check(
        matches!(uid_map(&o.stdout), Some((0, base, 65536)) if base > 0),
        || format!("--userns private must map root elsewhere; {o}"),
    )?;
    let o = run_text(c.run(&["--rm", "--userns", "bogus"], &["true"]))?;
    check(o.code == Some(125) && o.stderr.contains("--userns"), || {
        format!("a bad --userns is a usage error (125); {o}")
    })?;
    // A pool of one range: a second container is refused while the first
    // holds it, and gets it once the first is removed.
    let pool = tempfile::tempdir().expect("tempdir");
    let one = |cmd: &mut Command| {
        cmd.env("HULL_USERNS_DIR", pool.path())
            .env("HULL_USERNS_RANGE", "2000000000:65536");
    };
    let mut first = c.run(&["-d"], &["sleep", "1000"]);
    one(&mut first);
    let o = run_text(first)?;
    check(o.code == Some(0), || format!("{o}"))?;
    let id = o.stdout.trim().to_string();
    let mut second = c.run(&["--rm"], &["true"]);
    one(&mut second);
    let o = run_text(second)?;
    check(o.code == Some(125) && o.stderr.contains("in use"), || {
        format!("with every id range in use, run must fail with 125 and say so; {o}")
    })?;
    let mut rm = c.hull(&["rm", "-f", &id]);
    one(&mut rm);
    let o = run_text(rm)?;
    check(o.code == Some(0), || format!("{o}"))?;
    let mut third = c.run(&["--rm"], &["cat", "/proc/self/uid_map"]);
    one(&mut third);
    let o = run_text(third)?;
    check(uid_map(&o.stdout) == Some((0, 2000000000, 65536)), || {
        format!("rm must free the range for the next container; {o}")
    })
}

/// The scenarios only the ns backend has.
pub fn ns_trials() -> Vec<Trial> {
    type Scenario = fn(Backend) -> Result<(), Failed>;
    let all: [(&str, Scenario); 2] = [
        (
            "userns_root_is_an_unprivileged_host_id",
            userns_root_is_an_unprivileged_host_id,
        ),
        ("userns_host_and_private", userns_modes),
    ];
    let b = Backend("ns");
    all.into_iter()
        .map(|(name, f)| Trial::test(format!("ns::{name}"), move || f(b)))
        .collect()
}

/// The suite, one trial per scenario, named `<backend>::<scenario>`.
/// The scenarios named in `names` only.
pub fn some_trials(b: Backend, names: &[&str]) -> Vec<Trial> {
    trials(b)
        .into_iter()
        .filter(|t| names.iter().any(|n| t.name().ends_with(&format!("::{n}"))))
        .collect()
}

pub fn trials(b: Backend) -> Vec<Trial> {
    type Scenario = fn(Backend) -> Result<(), Failed>;
    let all: [(&str, Scenario); 15] = [
        ("output_and_exit_code", output_and_exit_code),
        ("stdin_10mib_round_trip", stdin_round_trip),
        ("env_cwd_user_hostname_groups", env_cwd_user_hostname),
        ("unknown_user_is_one_line", unknown_user_is_one_line),
        (
            "missing_command_127_not_executable_126",
            missing_command_127,
        ),
        ("sigterm_exits_143", sigterm_exits_143),
        (
            "proc_shows_only_the_container",
            proc_shows_only_the_container,
        ),
        ("out_of_memory_is_reported", out_of_memory_is_reported),
        ("bad_memory_size_is_125", bad_memory_size),
        ("kept_until_rm_with_ps_and_logs", kept_until_rm),
        ("terminal_echo_and_resize", terminal),
        ("detach_exec_logs_stop", detach_exec_stop),
        ("stop_times_out_into_kill", stop_times_out_into_kill),
        ("rm_force_leaves_nothing", rm_force_leaves_nothing),
        (
            "killed_sandbox_shows_the_reason",
            killed_sandbox_shows_the_reason,
        ),
    ];
    all.into_iter()
        .map(|(name, f)| Trial::test(format!("{}::{name}", b.0), move || f(b)))
        .collect()
}
