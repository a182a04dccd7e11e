//! Real OCI engines for the hull-runtime tests (Debian's podman, dockerd,
//! containerd), each with its own root, state dirs and socket, started and
//! stopped by the test, inside a network and mount namespace the test makes
//! (a holder process; every engine command enters it with nsenter), where
//! /var/lib/cni, /var/tmp and /var/cache/containers are the test's own.
#![allow(dead_code)] // each test target uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "busybox.rs"]
pub mod busybox;
#[path = "podman.rs"]
mod podman;

/// The image every engine runs.
pub const IMAGE: &str = "localhost/busybox:latest";
/// podman's default rlimits exceed this machine's hard limits.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// `hull-runtime` beside the test binary.
pub fn runtime_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/...")
        .join("hull-runtime");
    assert!(p.exists(), "{} is missing: cargo build", p.display());
    p
}

/// Fails with what to install when `tool` is missing.
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: run scripts/install-deps.sh (podman, docker.io, containerd)"
    );
}

/// `cmd`'s output, or None when it has not exited within `limit` (it is
/// killed then).
pub fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = read(Box::new(child.stdout.take()?));
    let err = read(Box::new(child.stderr.take()?));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Some(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The last 20 lines of the log file `path`.
fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Output as (status, stdout, stderr).
pub fn text(o: &Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A network and mount namespace held by a `sleep` of ours, with lo up
/// and the engines' machine-wide scratch dirs private to it.
pub struct Netns {
    holder: Child,
    _scratch: tempfile::TempDir,
}

impl Netns {
    pub fn new() -> Netns {
        let scratch = tempfile::tempdir().expect("tempdir");
        let s = scratch.path().display();
        let script = format!(
            "set -e; ip link set lo up; \
             for d in /var/lib/cni /var/cache/containers; do mkdir -p $d 2>/dev/null || true; mount -t tmpfs tmpfs $d; done; \
             mkdir -p {s}/vartmp; mount --bind {s}/vartmp /var/tmp; \
             echo ready; exec sleep 100000"
        );
        let mut holder = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        let out = holder.stdout.take().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the test's namespaces could not be set up"
        );
        Netns {
            holder,
            _scratch: scratch,
        }
    }

    /// `program` to run inside the namespaces.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-n", "-m", "-r", "-w", "--"])
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The busybox image as a rootfs tarball and as a docker-archive, made once
/// per test binary.
pub struct Images {
    pub rootfs_tar: PathBuf,
    pub docker_archive: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        busybox::rootfs(&root);
        let rootfs_tar = dir.path().join("busybox.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&rootfs_tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success(), "tar of the busybox rootfs failed");
        // A docker-archive (docker load, ctr import) from a scratch podman.
        let ns = Netns::new();
        let p = Podman::new(&ns, "ns");
        p.ok(&["import", rootfs_tar.to_str().unwrap(), IMAGE]);
        let docker_archive = dir.path().join("busybox-docker.tar");
        p.ok(&[
            "save",
            "--format",
            "docker-archive",
            "-o",
            docker_archive.to_str().unwrap(),
            IMAGE,
        ]);
        Images {
            rootfs_tar,
            docker_archive,
            _dir: dir,
        }
    })
}

/// A route of the CNI network besides the default ones, and its gateway
/// (an address on the bridge's subnets that nothing answers).
pub const ROUTE4: &str = "10.89.99.0/24";
pub const ROUTE4_VIA: &str = "10.89.7.99";
pub const ROUTE6: &str = "fd89:99::/64";
pub const ROUTE6_VIA: &str = "fd89:7::99";

/// A dual-stack CNI bridge network `hullnet` (10.89.7.0/24, fd89:7::/64)
/// with a route more per family ([`ROUTE4`], [`ROUTE6`]) and `portmap` for `-p`
/// (iptables-nft; the emulated KVM host loads the xtables modules for it).
pub fn cni_dir(dir: &Path) -> PathBuf {
    let d = dir.join("cni");
    std::fs::create_dir_all(&d).unwrap();
    let portmap = r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#;
    let conf = format!(
        r#"{{"cniVersion": "0.4.0", "name": "hullnet", "plugins": [
  {{"type": "bridge", "bridge": "hull-cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {{"type": "host-local", "routes": [{{"dst": "0.0.0.0/0"}}, {{"dst": "::/0"}},
                                             {{"dst": "{ROUTE4}", "gw": "{ROUTE4_VIA}"}}, {{"dst": "{ROUTE6}", "gw": "{ROUTE6_VIA}"}}],
            "ranges": [[{{"subnet": "10.89.7.0/24", "gateway": "10.89.7.1"}}],
                       [{{"subnet": "fd89:7::/64", "gateway": "fd89:7::1"}}]]}}}}{portmap}
]}}"#
    );
    std::fs::write(d.join("90-hullnet.conflist"), conf).unwrap();
    d
}

/// podman with a root, runroot, network config and hull-runtime state of
/// its own; `isolation` is hull-runtime's default backend.
pub struct Podman<'a> {
    ns: &'a Netns,
    pub dir: tempfile::TempDir,
    isolation: &'static str,
}

impl<'a> Podman<'a> {
    pub fn new(ns: &'a Netns, isolation: &'static str) -> Podman<'a> {
        require("podman");
        require("conmon");
        let dir = tempfile::tempdir().expect("tempdir");
        cni_dir(dir.path());
        Podman { ns, dir, isolation }
    }

    /// hull-runtime's --root for this podman.
    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("hull-runtime")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = podman::with_own_storage(self.ns.cmd("podman"), d);
        c.arg("--network-config-dir")
            .arg(d.join("cni"))
            .arg("--runtime")
            .arg(runtime_bin())
            .arg("--runtime-flag")
            .arg(format!("root={}", self.runtime_root().display()))
            .arg("--runtime-flag")
            .arg(format!("isolation={}", self.isolation))
            .args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("podman")
    }

    /// Runs podman; panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let (code, out, err) = text(&o);
        assert!(
            o.status.success(),
            "podman {args:?} exited {code:?}\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    /// Imports the busybox image.
    pub fn load_busybox(&self) {
        self.ok(&["import", images().rootfs_tar.to_str().unwrap(), IMAGE]);
    }
}

/// hull-runtime's containers under `root` (its `list`).
pub fn runtime_list(root: &Path) -> String {
    let o = Command::new(runtime_bin())
        .arg("--root")
        .arg(root)
        .arg("list")
        .output()
        .expect("hull-runtime list");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// [`runtime_list`] once it is empty, or after 15 s.
pub fn wait_empty(root: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = runtime_list(root);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An engine daemon the test started in its namespaces, its stderr in a
/// log file: stopped on drop with SIGTERM, then SIGKILL after `grace`.
struct Daemon {
    child: Child,
    log: PathBuf,
    grace: Duration,
}

impl Daemon {
    /// Starts `cmd` and waits (at most 60 s) until `answers`; panics with
    /// its log otherwise.
    fn start(
        name: &str,
        mut cmd: Command,
        log: &Path,
        grace: Duration,
        answers: impl Fn() -> bool,
    ) -> Daemon {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let daemon = Daemon {
            child,
            log: log.to_path_buf(),
            grace,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !answers() {
            assert!(
                Instant::now() < deadline,
                "{name} did not answer within 60 s: {}",
                std::fs::read_to_string(&daemon.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }
}

/// Panics with `what`'s output unless it succeeded.
fn succeeded(what: &str, o: Output) {
    assert!(o.status.success(), "{what}: {:?}", text(&o));
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// dockerd with its own data root, exec root, pidfile and socket, and
/// hull-runtime registered as runtime `hull` (and `hull-ns`).
pub struct Dockerd<'a> {
    ns: &'a Netns,
    _daemon: Daemon,
    pub dir: tempfile::TempDir,
    socket: PathBuf,
}

impl<'a> Dockerd<'a> {
    /// dockerd with a containerd of its own.
    pub fn start(ns: &'a Netns) -> Dockerd<'a> {
        Dockerd::start_on(ns, None)
    }

    /// dockerd on `containerd` (the test's, shared with `ctr`) when given,
    /// else on one it starts itself; the busybox image loaded.
    pub fn start_on(ns: &'a Netns, containerd: Option<&Containerd>) -> Dockerd<'a> {
        require("dockerd");
        require("containerd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let root = d.join("hull-runtime");
        let bin = runtime_bin();
        let config = serde_json::json!({
            "runtimes": {
                "hull": {"path": bin, "runtimeArgs": ["--root", root]},
                "hull-ns": {"path": bin, "runtimeArgs": ["--root", root, "--isolation", "ns"]},
            }
        });
        std::fs::write(d.join("daemon.json"), config.to_string()).unwrap();
        let socket = d.join("docker.sock");
        let mut cmd = ns.cmd("dockerd");
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--storage-driver",
                "vfs",
            ])
            .arg("--config-file")
            .arg(d.join("daemon.json"));
        if let Some(c) = containerd {
            cmd.arg("--containerd").arg(&c.socket);
        }
        // SIGTERM: dockerd stops its containers (and its own containerd).
        let daemon = Daemon::start(
            "dockerd",
            cmd,
            &d.join("dockerd.log"),
            Duration::from_secs(30),
            || {
                docker_cmd(ns, &socket, &["version"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
        let dk = Dockerd {
            ns,
            _daemon: daemon,
            dir,
            socket,
        };
        let archive = images().docker_archive.to_str().unwrap();
        succeeded("docker load", dk.docker(&["load", "-i", archive]));
        dk
    }

    pub fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("hull-runtime")
    }

    /// The tail of dockerd's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("dockerd.log"))
    }

    /// Its socket as `DOCKER_HOST` takes it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        docker_cmd(self.ns, &self.socket, args)
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("docker")
    }
}

fn docker_cmd(ns: &Netns, socket: &Path, args: &[&str]) -> Command {
    let mut c = ns.cmd("/usr/bin/docker");
    c.arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .args(args);
    c
}

/// containerd with its own root, state and socket (CRI off), the busybox
/// image imported for `ctr`; the shim finds hull-runtime through `ctr run
/// --runc-binary`.
pub struct Containerd<'a> {
    ns: &'a Netns,
    _daemon: Daemon,
    pub dir: tempfile::TempDir,
    socket: PathBuf,
}

impl<'a> Containerd<'a> {
    pub fn start(ns: &'a Netns, isolation: &str) -> Containerd<'a> {
        require("containerd");
        require("ctr");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            d.join("root").display(),
            d.join("state").display(),
            socket.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut cmd = ns.cmd("containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .env("HULL_RUNTIME_ISOLATION", isolation);
        let daemon = Daemon::start(
            "containerd",
            cmd,
            &d.join("containerd.log"),
            Duration::from_secs(20),
            || {
                ctr_cmd(ns, &socket, &["version"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        );
        let c = Containerd {
            ns,
            _daemon: daemon,
            dir,
            socket,
        };
        let archive = images().docker_archive.to_str().unwrap();
        succeeded("ctr image import", c.ctr(&["image", "import", archive]));
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        ctr_cmd(self.ns, &self.socket, args).output().expect("ctr")
    }

    /// `ctr args`, or None when it took longer than `limit`.
    pub fn ctr_within(&self, args: &[&str], limit: Duration) -> Option<Output> {
        output_within(ctr_cmd(self.ns, &self.socket, args), limit)
    }

    /// The tail of containerd's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("containerd.log"))
    }
}

fn ctr_cmd(ns: &Netns, socket: &Path, args: &[&str]) -> Command {
    let mut c = ns.cmd("ctr");
    c.arg("--address")
        .arg(socket)
        .args(["--namespace", "hulltest"])
        .args(args);
    c
}

/// An input of [`run_in_pty`] that resizes the terminal: `"\0resize 33 111"`.
pub const RESIZE: &str = "\0resize ";

/// Runs `program args` with a pty as its terminal (stdin, stdout, stderr,
/// controlling terminal), writing `input` chunk by chunk with pauses;
/// returns everything it printed and its exit status.
pub fn run_in_pty(mut cmd: Command, input: &[&str], timeout: Duration) -> (Option<i32>, String) {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let (master, slave) = hull::pty::open_pty().expect("pty");
    let slave_fd = std::os::fd::AsRawFd::as_raw_fd(&slave);
    // SAFETY: setsid, ioctl and dup2 are async-signal-safe; the fd is open.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::ioctl(slave_fd, libc::TIOCSCTTY, 0);
            for fd in 0..3 {
                libc::dup2(slave_fd, fd);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn under a pty");
    drop(slave);
    let mut m = std::fs::File::from(master);
    let mut reader = m.try_clone().unwrap();
    let out = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    for chunk in input {
        std::thread::sleep(Duration::from_millis(1500));
        // "resize ROWS COLS": the terminal's window changes size.
        if let Some(size) = chunk.strip_prefix(RESIZE) {
            let mut it = size.split_whitespace().map(|n| n.parse::<u16>().unwrap());
            let ws = libc::winsize {
                ws_row: it.next().unwrap(),
                ws_col: it.next().unwrap(),
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads a winsize valid for the call.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&m), libc::TIOCSWINSZ, &ws) };
            continue;
        }
        let _ = m.write_all(chunk.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(m);
    (status, out.join().unwrap_or_default())
}
