//! One process session per connection: Hello, Start, stdio relay, Exit.
//! PID 1 reaps every child; exit statuses reach sessions through the reaper.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hull_agent::protocol::{
    self, DnsRelay, ErrorMsg, Exit, Frame, Hello, Kind, Marks, Resize, Signal, Start, Started,
    read_frame, write_frame,
};
use hull_agent::users;

use crate::sys;

/// Serialises `Command::spawn` (which may reap its own failed child) with
/// the reaper's `waitpid(-1)`.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Reaper {
    waiting: HashMap<i32, Sender<i32>>,
    early: HashMap<i32, i32>,
}

fn reaper() -> &'static Mutex<Reaper> {
    static R: OnceLock<Mutex<Reaper>> = OnceLock::new();
    R.get_or_init(|| {
        std::thread::spawn(reap_forever);
        Mutex::new(Reaper::default())
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps every child (we are PID 1: orphans become ours) and hands the
/// statuses of session processes to their sessions.
fn reap_forever() {
    loop {
        if !sys::wait_for_zombie() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let _g = lock(&SPAWN_LOCK);
        while let Some((pid, status)) = sys::reap_one() {
            debug!("reaped pid {pid}");
            let mut r = lock(reaper());
            match r.waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    if r.early.len() < 4096 {
                        r.early.insert(pid, status);
                    }
                }
            }
        }
    }
}

fn watch(pid: i32) -> Receiver<i32> {
    let (tx, rx) = channel();
    let mut r = lock(reaper());
    match r.early.remove(&pid) {
        Some(status) => {
            let _ = tx.send(status);
        }
        None => {
            r.waiting.insert(pid, tx);
        }
    }
    rx
}

/// What the agent knows for every session.
pub struct Ctx {
    pub marks: Marks,
    /// The container's root as seen by the agent (for /etc/passwd).
    pub root: PathBuf,
    /// Why the container could not be set up, told to every session.
    pub setup_error: Option<String>,
    /// The agent is a microVM's PID 1 (it may step the clock and feed the
    /// entropy pool: in a namespace sandbox those are the host's).
    pub in_vm: bool,
    /// A template's agent (restored): the container's root is made from
    /// the disks the main process's Start names.
    pub restored_root: Mutex<RestoredRoot>,
}

/// The root of a guest booted as a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoredRoot {
    /// Booted with its disks (not a template): nothing to do.
    NotATemplate,
    /// Waiting for the main Start's disks.
    Pending,
    /// Made, or why not (told to every later session).
    Made(Result<(), String>),
}

/// How long a restored guest waits for the disks hull gave its slots.
const RESTORED_DISKS_WAIT: Duration = Duration::from_secs(10);

/// The root of a restored guest, from the main Start's disks, once; the
/// error of a root that could not be made.
fn root_after_restore(start: &Start, ctx: &Ctx) -> Option<String> {
    let mut state = lock(&ctx.restored_root);
    match &*state {
        RestoredRoot::NotATemplate | RestoredRoot::Made(Ok(())) => return None,
        RestoredRoot::Made(Err(e)) => return Some(e.clone()),
        RestoredRoot::Pending if !start.main => {
            return Some("the container's main process has not started yet".into());
        }
        RestoredRoot::Pending => {}
    }
    let made = match &start.root_disks {
        None => Err("this guest was restored from a template and the host sent no disks".into()),
        // Entropy and clock first: the root's mounts take their times from it.
        Some(disks) => start
            .freshen
            .as_ref()
            .map_or(Ok(()), freshen)
            .and_then(|()| crate::rootfs::vm_root_after_restore(disks, RESTORED_DISKS_WAIT)),
    };
    debug!("root after restore: {made:?}");
    *state = RestoredRoot::Made(made.clone());
    made.err()
}

type Writer = Arc<Mutex<File>>;

fn send(w: &Writer, f: &Frame) -> bool {
    write_frame(&mut *lock(w), f).is_ok()
}

/// An error and its causes on one line: "what failed: why: why".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn send_error(w: &Writer, message: String, exit_code: i32) {
    send(
        w,
        &Frame::json(Kind::Error, &ErrorMsg { message, exit_code }),
    );
}

/// Serves one connection; returns the exit status if this was the main process.
pub fn serve(conn: File, ctx: &Ctx) -> Option<i32> {
    let mut reader = conn.try_clone().ok()?;
    let writer: Writer = Arc::new(Mutex::new(conn));
    let hello = Hello {
        version: protocol::VERSION,
        marks: ctx.marks.clone(),
    };
    if !send(&writer, &Frame::json(Kind::Hello, &hello)) {
        return None;
    }
    let start: Start = match read_frame(&mut reader).map(|f| f.map(first_frame)) {
        Ok(Some(Ok(First::Start(s)))) => *s,
        Ok(Some(Ok(First::SignalAll(s)))) => {
            signal_all(s.signal, &writer);
            return None;
        }
        Ok(Some(Ok(First::DnsRelay(r)))) => {
            debug!("relaying DNS queries to {}:53", r.address);
            if let Err(e) = crate::dns::relay(r.address, reader, |f| send(&writer, f)) {
                send_error(&writer, format!("agent: {e}"), 125);
            }
            return None;
        }
        Ok(Some(Err(e))) | Err(e) => {
            send_error(&writer, format!("agent: {}", chain(&e)), 125);
            return None;
        }
        Ok(None) => return None,
    };
    debug!("start {:?} (main: {})", start.argv, start.main);
    let main = start.main;
    let setup_error = ctx
        .setup_error
        .clone()
        .or_else(|| root_after_restore(&start, ctx));
    let status = match &setup_error {
        Some(e) => {
            send_error(&writer, format!("setting up the container: {e}"), 125);
            125
        }
        None => run(start, ctx, &mut reader, &writer),
    };
    if main {
        // The sandbox ends after this (a VM reset loses whatever the guest
        // kernel has not handed to the device yet): wait until the host,
        // having read the final frame, closes the connection.
        wait_for_close(&reader, Duration::from_secs(10));
    }
    main.then_some(status)
}

/// What a connection asks for first.
enum First {
    Start(Box<Start>),
    SignalAll(Signal),
    DnsRelay(DnsRelay),
}

fn first_frame(f: Frame) -> Result<First, protocol::ProtocolError> {
    if f.kind == Kind::Signal {
        return f.parse::<Signal>().map(First::SignalAll);
    }
    if f.kind == Kind::DnsRelay {
        return f.parse::<DnsRelay>().map(First::DnsRelay);
    }
    f.expect::<Start>(Kind::Start)
        .map(|s| First::Start(Box::new(s)))
}

/// `signal` to every process of the container: kill(-1) from the agent,
/// PID 1 of the guest or of the ns sandbox's pid namespace, reaches all of
/// them but itself.
fn signal_all(signal: i32, w: &Writer) {
    if !(1..=64).contains(&signal) {
        send_error(w, format!("invalid signal {signal}"), 125);
        return;
    }
    debug!("signal {signal} to every process");
    sys::kill(-1, signal);
    let exit = protocol::Exit {
        code: Some(0),
        signal: None,
        reason: None,
        at_ms: sys::boot_ms(),
    };
    send(w, &Frame::json(Kind::Exit, &exit));
}

/// Makes a restored guest its own: the host's entropy (and none of the
/// template's hwrng bytes), then its clock.
fn freshen(f: &protocol::Freshen) -> Result<(), String> {
    if f.entropy.is_empty() || f.entropy.len() > protocol::MAX_ENTROPY {
        return Err(format!(
            "the host sent {} entropy bytes (1 to {} expected)",
            f.entropy.len(),
            protocol::MAX_ENTROPY
        ));
    }
    sys::add_entropy(&f.entropy).map_err(|e| format!("reseeding the entropy pool: {e}"))?;
    let drained = sys::drain_hwrng().map_err(|e| format!("draining /dev/hwrng: {e}"))?;
    sys::set_wall_clock(f.wall_clock_ns).map_err(|e| format!("setting the clock: {e}"))?;
    debug!("entropy reseeded, {drained} template bytes of /dev/hwrng dropped, clock stepped");
    Ok(())
}

/// Reads (and drops) until the peer closes the connection, or `limit`.
fn wait_for_close(conn: &File, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    let Ok(mut r) = conn.try_clone() else { return };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            debug!("the host did not close the connection in {limit:?}");
            return;
        }
        let mut p = libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
        if n > 0 && !matches!(r.read(&mut buf), Ok(n) if n > 0) {
            return; // EOF or error: the host is done
        }
    }
}

fn run(start: Start, ctx: &Ctx, reader: &mut File, writer: &Writer) -> i32 {
    let export = start.export_upper && start.main && ctx.in_vm;
    if start.argv.is_empty() {
        send_error(writer, "no command given".into(), 125);
        return 125;
    }
    // A restored guest's root was made after freshening (root_after_restore).
    let freshened = *lock(&ctx.restored_root) != RestoredRoot::NotATemplate;
    if let Some(f) = start
        .freshen
        .as_ref()
        .filter(|_| start.main && ctx.in_vm && !freshened)
    {
        if let Err(e) = freshen(f) {
            send_error(writer, e, 125);
            return 125;
        }
    }
    if let Some(h) = start.hostname.as_deref().filter(|_| start.main) {
        if let Err(e) = sys::set_hostname(h) {
            send_error(writer, format!("setting the hostname: {e}"), 125);
            return 125;
        }
    }
    if let Some(net) = start.network.as_ref().filter(|_| start.main) {
        debug!("network {net:?}");
        if let Err(e) = crate::network::apply(net, &ctx.root) {
            send_error(writer, format!("setting up the network: {e}"), 125);
            return 125;
        }
    }
    debug!("resolving user {:?}", start.user);
    let id = match users::resolve(&ctx.root, &start.user.user, start.user.group.as_deref()) {
        Ok(id) => id,
        Err(e) => {
            send_error(writer, e.to_string(), 125);
            return 125;
        }
    };
    let mut env: Vec<(String, String)> = start
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let has = |env: &[(String, String)], k: &str| env.iter().any(|(key, _)| key == k);
    if !has(&env, "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    if !has(&env, "HOME") {
        env.push(("HOME".into(), id.home.clone()));
    }
    if !has(&env, "HOSTNAME") {
        env.push(("HOSTNAME".into(), sys::hostname()));
    }
    if start.tty && !has(&env, "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    debug!("finding {}", start.argv[0]);
    let program = match find_program(&start.argv[0], &path_var, &start.cwd) {
        Ok(p) => p,
        Err((msg, code)) => {
            send_error(writer, msg, code);
            return code;
        }
    };
    let cwd = if start.cwd.is_empty() {
        "/".to_string()
    } else {
        start.cwd.clone()
    };
    if !Path::new(&cwd).is_dir() {
        // As docker does for a WORKDIR that does not exist yet.
        let _ = std::fs::create_dir_all(&cwd);
    }

    debug!("spawning {} in {cwd}", program.display());
    let mut cmd = Command::new(&program);
    cmd.arg0(&start.argv[0])
        .args(&start.argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&cwd);
    let mut pty_master: Option<File> = None;
    if start.tty {
        let (master, slave) = match sys::openpty(start.rows, start.cols) {
            Ok(p) => p,
            Err(e) => {
                send_error(writer, format!("allocating a terminal: {e}"), 125);
                return 125;
            }
        };
        let s = |f: &OwnedFd| f.try_clone().map(Stdio::from);
        match (s(&slave), s(&slave), s(&slave)) {
            (Ok(a), Ok(b), Ok(c)) => {
                cmd.stdin(a).stdout(b).stderr(c);
            }
            _ => {
                send_error(writer, "duplicating the terminal".into(), 125);
                return 125;
            }
        }
        pty_master = Some(File::from(master));
        drop(slave);
    } else {
        cmd.stdin(if start.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    let (uid, gid, mut groups, tty) = (id.uid, id.gid, id.groups.clone(), start.tty);
    let privileges = match crate::privileges::Prepared::new(start.privileges.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            send_error(writer, e.to_string(), 125);
            return 125;
        }
    };
    for &g in start.privileges.iter().flat_map(|p| &p.additional_gids) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let rlimits = start.rlimits.clone();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setsid, ioctl, setrlimit, prctl,
    // capset, setgroups, setgid, setuid) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || sys::child_setup(tty, &groups, gid, uid, &rlimits, &privileges));
    }
    let oom_kills_before = sys::oom_kills();
    let spawned = {
        let _g = lock(&SPAWN_LOCK);
        cmd.spawn()
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            };
            send_error(writer, format!("exec {}: {e}", start.argv[0]), code);
            return code;
        }
    };
    drop(cmd);
    let pid = child.id() as i32;
    debug!("spawned pid {pid}");
    let exited = watch(pid);
    debug!("watching pid {pid}");
    send(
        writer,
        &Frame::json(
            Kind::Started,
            &Started {
                pid,
                at_ms: sys::boot_ms(),
            },
        ),
    );

    debug!("sent Started");
    // Output relays.
    // Each relay says on `relayed` when its stream ended.
    let (relayed_tx, relayed) = channel::<()>();
    let mut outputs = 0;
    let mut relay = |src: File, kind: Kind, w: Writer| {
        let done = relayed_tx.clone();
        outputs += 1;
        std::thread::spawn(move || {
            relay_output(src, kind, &w);
            let _ = done.send(());
        });
    };
    let mut stdin_sink: Option<File> = if let Some(master) = &pty_master {
        if let Ok(m) = master.try_clone() {
            relay(m, Kind::Stdout, writer.clone());
        }
        master.try_clone().ok()
    } else {
        let take = |fd: Option<OwnedFd>| fd.map(File::from);
        if let Some(out) = take(child.stdout.take().map(OwnedFd::from)) {
            relay(out, Kind::Stdout, writer.clone());
        }
        if let Some(err) = take(child.stderr.take().map(OwnedFd::from)) {
            relay(err, Kind::Stderr, writer.clone());
        }
        take(child.stdin.take().map(OwnedFd::from))
    };

    // Input from the host: stdin, resize, signals. Runs until the
    // connection ends; the session ends when the process does.
    let mut input_reader = match reader.try_clone() {
        Ok(r) => r,
        Err(_) => return 125,
    };
    let master_fd = pty_master.as_ref().map(|m| m.as_raw_fd());
    std::thread::spawn(move || {
        while let Ok(Some(f)) = read_frame(&mut input_reader) {
            match f.kind {
                Kind::Stdin => {
                    if let Some(s) = stdin_sink.as_mut() {
                        if s.write_all(&f.payload).is_err() {
                            stdin_sink = None;
                        }
                    }
                }
                Kind::StdinClose => {
                    if tty {
                        if let Some(s) = stdin_sink.as_mut() {
                            let _ = s.write_all(&[4]); // ^D at the start of a line
                        }
                    } else {
                        stdin_sink = None;
                    }
                }
                Kind::Resize => {
                    if let (Ok(r), Some(fd)) = (f.parse::<Resize>(), master_fd) {
                        sys::set_winsize(fd, r.rows, r.cols);
                    }
                }
                Kind::Signal => {
                    if let Ok(s) = f.parse::<Signal>() {
                        debug!("signal {} to pid {pid}", s.signal);
                        sys::kill(pid, s.signal);
                    }
                }
                _ => {}
            }
        }
    });

    debug!("waiting for pid {pid}");
    let status = exited.recv().unwrap_or(0);
    // Output the process wrote before it exited; a background process that
    // keeps the pipe open must not hold the exit back for long.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    for _ in 0..outputs {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if relayed.recv_timeout(left).is_err() {
            break;
        }
    }
    drop(pty_master);
    debug!("pid {pid} ended with status {status:#x}");
    let exit = sys::exit_from_status(pid, status, oom_kills_before);
    let code = exit.status();
    // A failed step's changes are not kept: nothing to send.
    if export && code == 0 {
        export_upper(writer);
    }
    send(
        writer,
        &Frame::json(
            Kind::Exit,
            &Exit {
                at_ms: sys::boot_ms(),
                ..exit
            },
        ),
    );
    code
}

/// The step's changes as a tar in Layer frames (hull build). A failure
/// is said on stderr and ends the tar early, which the host reports.
fn export_upper(w: &Writer) {
    let mut sink =
        crate::export::FrameSink::new(|b: &[u8]| send(w, &Frame::new(Kind::Layer, b.to_vec())));
    let done = crate::export::write_upper(&mut sink).and_then(|()| sink.flush());
    if let Err(e) = done {
        let line = format!("hull-agent: sending the step's changes: {e}\n");
        send(w, &Frame::new(Kind::Stderr, line.into_bytes()));
    }
}

fn relay_output(mut src: File, kind: Kind, w: &Writer) {
    let mut buf = vec![0u8; protocol::MAX_DATA];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !send(w, &Frame::new(kind, buf[..n].to_vec())) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: the terminal's last writer closed it.
            Err(_) => return,
        }
    }
}

/// Finds `name` as execve would with `PATH`, with docker's messages and
/// statuses: 127 not found, 126 not executable.
fn find_program(name: &str, path: &str, cwd: &str) -> Result<PathBuf, (String, i32)> {
    let not_found = || {
        (
            format!("exec: \"{name}\": executable file not found in $PATH"),
            127,
        )
    };
    let candidates: Vec<PathBuf> = if name.contains('/') {
        let p = Path::new(name);
        vec![if p.is_absolute() {
            p.to_path_buf()
        } else {
            Path::new(cwd).join(p)
        }]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join(name))
            .collect()
    };
    let mut not_executable = None;
    for c in candidates {
        match std::fs::metadata(&c) {
            Ok(m) if m.is_file() => {
                use std::os::unix::fs::PermissionsExt;
                if m.permissions().mode() & 0o111 != 0 {
                    return Ok(c);
                }
                not_executable.get_or_insert(c);
            }
            Ok(m) if m.is_dir() && name.contains('/') => {
                return Err((format!("exec: \"{name}\": is a directory"), 126));
            }
            _ => {}
        }
    }
    match not_executable {
        Some(p) => Err((format!("exec: \"{}\": permission denied", p.display()), 126)),
        None => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn freshen_refuses_no_or_too_much_entropy_before_touching_the_kernel() {
        let none = protocol::Freshen {
            entropy: Vec::new(),
            wall_clock_ns: 0,
        };
        assert_eq!(
            freshen(&none).unwrap_err(),
            "the host sent 0 entropy bytes (1 to 512 expected)"
        );
        let flood = protocol::Freshen {
            entropy: vec![7; protocol::MAX_ENTROPY + 1],
            wall_clock_ns: 0,
        };
        assert!(freshen(&flood).unwrap_err().contains("513 entropy bytes"));
    }
    use super::*;

    #[test]
    fn an_error_is_sent_with_each_cause_once() {
        let e = Frame::new(Kind::Start, b"[1]".to_vec())
            .parse::<Start>()
            .unwrap_err();
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(cause.contains("invalid type"), "{cause}");
        assert_eq!(chain(&e), format!("malformed Start message: {cause}"));
    }
}
