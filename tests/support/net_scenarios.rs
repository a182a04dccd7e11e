//! Network scenarios for `hull run`, one suite for both backends
//! (tests/net_ns.rs on this host, tests/net_vm.rs through real KVM).
//!
//! Every trial re-runs this test binary for itself alone under
//! `unshare --net`: the bridges, veths, taps, nftables rules and sysctls
//! hull makes live and die in a network namespace the trial created, and
//! no packet leaves it. The "outside world" is an interface in that
//! namespace (192.0.2.1, TEST-NET-1, on a veth) with a TCP service of the test's own.
#![allow(dead_code)] // each test target uses its own subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

#[path = "scenarios.rs"]
mod scenarios;

pub use scenarios::build_runtime;
use scenarios::{busybox, hull_bin, hull_proc};

/// Set in the re-run of a trial inside its own network namespace.
const INNER: &str = "HULL_NET_TEST_INNER";
/// How long one hull command may take on a quiet machine (a microVM under
/// the emulated KVM host boots in seconds; scaled by `hull_proc::patience`).
const HANG: Duration = Duration::from_secs(240);
/// How long a detached server has to start answering.
const READY: Duration = Duration::from_secs(120);
/// What the containers' httpd serves.
const PAGE: &str = "hello from hull\n";
/// The test's "outside" address (a dummy interface in the trial's netns).
const OUTSIDE: &str = "192.0.2.1";

/// A busybox rootfs with a page for httpd and a UDP echo server.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        busybox::rootfs(d.path());
        std::fs::create_dir_all(d.path().join("www")).unwrap();
        std::fs::write(d.path().join("www/index.html"), PAGE).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/udp_echo.c");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(d.path().join("bin/udp_echo"))
            .arg(&src)
            .status()
            .expect("gcc (and Debian's libc6-dev) is needed to build the UDP echo server");
        assert!(status.success(), "building tests/support/udp_echo.c failed");
        d
    })
    .path()
}

/// What a command printed and how it ended.
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Collects a child's output, killing it after `limit`.
fn wait_output(child: Child, limit: Duration) -> Result<Output, Failed> {
    let (out, _) =
        hull_proc::wait_within(child, limit).map_err(|e| format!("waiting for a child: {e}"))?;
    Ok(out)
}

fn run(mut cmd: Command) -> Result<Out, Failed> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let out = wait_output(child, hull_proc::patient(HANG))?;
    Ok(Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

/// One trial's hull: a state dir of its own, one backend.
struct Hull {
    backend: &'static str,
    state: tempfile::TempDir,
}

impl Hull {
    fn new(backend: &'static str) -> Hull {
        Hull {
            backend,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// hull with this trial's state dir; HULL_NETWORK is cleared, so `run`
    /// without `--network` takes hull's own default.
    fn hull(&self, args: &[&str]) -> Result<Out, Failed> {
        let mut c = Command::new(hull_bin());
        c.env_remove("HULL_NETWORK")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args);
        run(c)
    }

    /// `hull run --isolation B --rootfs R FLAGS CMD`.
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Result<Out, Failed> {
        let mut c = Command::new(hull_bin());
        c.env_remove("HULL_NETWORK")
            .arg("--state-dir")
            .arg(self.state.path())
            .args(["run", "--isolation", self.backend, "--rootfs"])
            .arg(rootfs())
            .args(flags)
            .args(cmd);
        run(c)
    }

    /// `run -d`, which must succeed; the container's id.
    fn detach(&self, flags: &[&str], cmd: &[&str]) -> Result<String, Failed> {
        let mut all = vec!["-d"];
        all.extend_from_slice(flags);
        let o = self.run(&all, cmd)?;
        check(o.code == Some(0), || format!("run -d {flags:?}: {o}"))?;
        Ok(o.stdout.trim().to_string())
    }

    /// A detached httpd serving PAGE on port 80.
    fn httpd(&self, flags: &[&str]) -> Result<String, Failed> {
        self.detach(flags, &["httpd", "-f", "-p", "80", "-h", "/www"])
    }

    /// Detached httpds started at once, one per flag set (their microVMs
    /// boot side by side); their ids, in order.
    fn httpds(&self, flags: &[&[&str]]) -> Result<Vec<String>, Failed> {
        let httpd: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/www"];
        let runs: Vec<(&[&str], &[&str])> = flags.iter().map(|f| (*f, httpd)).collect();
        self.detach_all(&runs)
    }

    /// `run -d` of each (flags, command) at once; their ids, in order.
    fn detach_all(&self, runs: &[(&[&str], &[&str])]) -> Result<Vec<String>, Failed> {
        std::thread::scope(|s| {
            let started: Vec<_> = runs
                .iter()
                .map(|(f, c)| s.spawn(move || self.detach(f, c).map_err(|e| format!("{e:?}"))))
                .collect();
            started
                .into_iter()
                .map(|t| {
                    t.join()
                        .map_err(|_| Failed::from("a starting thread panicked"))?
                        .map_err(Failed::from)
                })
                .collect()
        })
    }

    /// Leases held in the state dir's networks.
    fn leases(&self) -> Vec<String> {
        let mut all = Vec::new();
        let dir = self.state.path().join("networks");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".leases") {
                for l in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                    all.push(l.file_name().to_string_lossy().into_owned());
                }
            }
        }
        all
    }
}

impl Drop for Hull {
    fn drop(&mut self) {
        let dir = self.state.path().join("containers");
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.hull(&["rm", "-f", &id]);
        }
    }
}

/// The links of the trial's network namespace (`ip -o link`).
fn links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect()
}

/// hull's nftables table, as `nft list` shows it ("" when there is none).
fn hull_rules() -> String {
    Command::new("nft")
        .args(["list", "table", "ip", "hull"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// An HTTP GET of / at `addr`; the body, or why not.
fn http_get(addr: &str) -> Result<String, String> {
    let sa: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Retries `http_get` until it serves PAGE or READY passes.
fn wait_page(addr: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + READY;
    loop {
        match http_get(addr) {
            Ok(body) if body == PAGE => return Ok(()),
            r if Instant::now() > deadline => {
                return Err(format!("{addr} never served the page: last {r:?}").into());
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A shell line for a container that fetches / from `host` port 80 with
/// busybox nc (busybox wget crashes in Debian's static build).
fn fetch_cmd(host: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} 80")
}

/// Waits until container `name` resolves `host` and gets the page from
/// it; the last output otherwise.
fn container_fetches(h: &Hull, network: &str, host: &str) -> Result<bool, Failed> {
    let o = h.run(
        &["--rm", "--network", network],
        &["sh", "-c", &fetch_cmd(host)],
    )?;
    Ok(o.code == Some(0) && o.stdout.ends_with(PAGE))
}

/// The test's outside world: a veth (the host kernel may lack `dummy`)
/// with OUTSIDE and a TCP service on port 9 that says "outside".
fn outside_service() -> Result<(), Failed> {
    for args in [
        &[
            "link", "add", "outside0", "type", "veth", "peer", "name", "outside1",
        ][..],
        &["addr", "add", "192.0.2.1/24", "dev", "outside0"],
        &["link", "set", "outside0", "up"],
        &["link", "set", "outside1", "up"],
    ] {
        let o = Command::new("ip").args(args).output()?;
        check(o.status.success(), || {
            format!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr))
        })?;
    }
    let l = TcpListener::bind((OUTSIDE, 9))?;
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let _ = c.write_all(b"outside\n");
        }
    });
    Ok(())
}

// --- scenarios -----------------------------------------------------------

fn published_port_answers_on_host_addresses(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let id = h.httpd(&["--name", "web", "--network", "bridge", "-p", "18080:80"])?;
    wait_page("127.0.0.1:18080")?;
    // ::1 through the monitor's port proxy (DNAT's answer to ::1 would be
    // dropped on the bridge), and, on a network without IPv6, the host's
    // other IPv6 addresses too.
    wait_page("[::1]:18080")?;
    let o = Command::new("ip")
        .args(["-6", "addr", "add", "fd00:99::1/128", "dev", "lo", "nodad"])
        .output()?;
    check(o.status.success(), || {
        format!("ip -6 addr add: {}", String::from_utf8_lossy(&o.stderr))
    })?;
    wait_page("[fd00:99::1]:18080")?;
    let o = h.hull(&["network", "inspect", "bridge"])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    let gw = v[0]["gateway"].as_str().ok_or("no gateway in inspect")?;
    let ip = v[0]["containers"][0]["ip"]
        .as_str()
        .ok_or("no container in inspect")?;
    wait_page(&format!("{gw}:18080"))?;
    wait_page(&format!("{ip}:80"))?;
    let o = h.hull(&["port", "web"])?;
    check(o.stdout == "80/tcp -> 0.0.0.0:18080\n", || {
        format!("hull port: {o}")
    })?;
    let o = h.hull(&["rm", "-f", &id])?;
    check(o.code == Some(0), || format!("rm -f: {o}"))?;
    check(http_get("127.0.0.1:18080").is_err(), || {
        "the port still answers after rm -f".into()
    })?;
    check(http_get("[::1]:18080").is_err(), || {
        "the port still answers on ::1 after rm -f".into()
    })?;
    // Nothing holds the port on IPv6 any more: no proxy is left.
    let taken = TcpListener::bind("[::]:18080");
    check(taken.is_ok(), || {
        format!("[::]:18080 still taken after rm -f (a port proxy left?): {taken:?}")
    })?;
    let left: Vec<String> = links()
        .into_iter()
        .filter(|l| l.starts_with("hv"))
        .collect();
    check(left.is_empty(), || {
        format!("veths left after rm -f: {left:?}")
    })?;
    check(!hull_rules().contains("dnat"), || {
        format!("port rules left after rm -f:\n{}", hull_rules())
    })?;
    check(h.leases().is_empty(), || {
        format!("leases left after rm -f: {:?}", h.leases())
    })
}

fn published_udp_port_echoes(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    // -p without --network: the default network, as docker's. The second
    // port, on every address, answers on ::1 through the port proxy.
    h.detach(
        &["-p", "127.0.0.1:15353:53/udp", "-p", "15354:53/udp"],
        &["udp_echo", "53"],
    )?;
    udp_echoes("127.0.0.1:0", "127.0.0.1:15353")?;
    udp_echoes("[::1]:0", "[::1]:15354")
}

/// Sends from `from` to `to` until the echo comes back (READY at most).
fn udp_echoes(from: &str, to: &str) -> Result<(), Failed> {
    let s = UdpSocket::bind(from)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + READY;
    let mut buf = [0u8; 64];
    loop {
        s.send_to(b"are you there", to)?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return check(&buf[..n] == b"are you there", || {
                format!("echo came back as {:?}", String::from_utf8_lossy(&buf[..n]))
            });
        }
        if Instant::now() > deadline {
            return Err(format!("no UDP echo through {to}").into());
        }
    }
}

fn containers_reach_each_other_by_name_and_alias(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.hull(&["network", "create", "appnet"])?;
    check(o.code == Some(0), || format!("network create: {o}"))?;
    // Started before db: it must still find db by name (the network's
    // resolver answers, not a copy of the names taken at its start). With
    // it, at once, a server on the default network for the last check.
    h.detach_all(&[
        (
            &["--name", "early", "--network", "appnet"],
            &["sleep", "1000"],
        ),
        (
            &["--name", "plain", "--network", "bridge"],
            &["httpd", "-f", "-p", "80", "-h", "/www"],
        ),
    ])?;
    h.httpd(&[
        "--name",
        "db",
        "--network",
        "appnet",
        "--network-alias",
        "database",
    ])?;
    let o = h.hull(&["network", "inspect", "appnet"])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    let ip = v[0]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "db"))
        .and_then(|c| c["ip"].as_str())
        .ok_or_else(|| format!("db not in inspect: {o}"))?;
    wait_page(&format!("{ip}:80"))?;
    // A container started after db, by name and by alias (one boot).
    let o = h.run(
        &["--rm", "--network", "appnet"],
        &[
            "sh",
            "-c",
            &format!("{} && {}", fetch_cmd("db"), fetch_cmd("database")),
        ],
    )?;
    check(
        o.code == Some(0) && o.stdout.matches(PAGE).count() == 2,
        || format!("a container on appnet could not fetch from db and from database: {o}"),
    )?;
    let o = h.hull(&["exec", "early", "sh", "-c", &fetch_cmd("database")])?;
    check(o.code == Some(0) && o.stdout.ends_with(PAGE), || {
        format!("a container started before db could not fetch from database: {o}")
    })?;
    // The network's resolver goes with its last container.
    let pid_file = h.state.path().join("networks/appnet.dnsmasq.pid");
    let pid = std::fs::read_to_string(&pid_file).map_err(|e| format!("no resolver pid: {e}"))?;
    let o = h.hull(&["rm", "-f", "early", "db"])?;
    check(o.code == Some(0), || format!("rm -f: {o}"))?;
    check(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        || {
            format!(
                "appnet's resolver (pid {}) outlived its containers",
                pid.trim()
            )
        },
    )?;
    // The default network resolves no names, as docker's.
    let o = h.run(
        &["--rm", "--network", "bridge"],
        &["sh", "-c", &fetch_cmd("plain")],
    )?;
    check(o.code != Some(0), || format!("bridge resolved a name: {o}"))
}

fn containers_reach_each_other_over_ipv6_by_name(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.hull(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:77::/64",
        "dual",
    ])?;
    check(o.code == Some(0), || format!("network create --ipv6: {o}"))?;
    // Started before db: it finds db's IPv6 address through the network's
    // resolver (AAAA), not through its /etc/hosts.
    h.detach(
        &["--name", "early", "--network", "dual"],
        &["sleep", "1000"],
    )?;
    // --ip6 as docker's: inside the IPv6 subnet of a network made with
    // --ipv6, held by one container; anything else is one line, exit 125.
    let one_line = |o: &Out, what: &str| {
        check(
            o.code == Some(125) && o.stderr.trim().lines().count() == 1 && o.stderr.contains(what),
            || format!("want exit 125 and one line with {what:?}; {o}"),
        )
    };
    let o = h.run(
        &["--rm", "--network", "dual", "--ip6", "fd00:78::5"],
        &["true"],
    )?;
    one_line(&o, "outside")?;
    let o = h.run(
        &["--rm", "--network", "bridge", "--ip6", "fd00:77::5"],
        &["true"],
    )?;
    one_line(&o, "no IPv6 subnet")?;
    h.httpd(&[
        "--name",
        "db",
        "--network",
        "dual",
        "--ip6",
        "fd00:77::99",
        "-p",
        "18081:80",
    ])?;
    let o = h.run(
        &["--rm", "--network", "dual", "--ip6", "fd00:77::99"],
        &["true"],
    )?;
    one_line(&o, "already in use")?;
    let o = h.hull(&["network", "inspect", "dual"])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    let gw6 = v[0]["gateway6"].as_str().ok_or("no gateway6 in inspect")?;
    let ip6 = v[0]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "db"))
        .and_then(|c| c["ip6"].as_str())
        .ok_or_else(|| format!("db has no ip6 in inspect: {o}"))?
        .to_string();
    let early6 = v[0]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "early"))
        .and_then(|c| c["ip6"].as_str())
        .unwrap_or_default();
    check(
        gw6 == "fd00:77::1" && ip6 == "fd00:77::99" && early6.starts_with("fd00:77::"),
        || format!("addresses not as asked (db --ip6 fd00:77::99) or outside fd00:77::/64: {o}"),
    )?;
    // From the host: the container's address, and the published port on
    // the host's IPv6 address (DNAT in ip6 hull, as docker with ip6tables).
    wait_page(&format!("[{ip6}]:80"))?;
    wait_page(&format!("[{gw6}]:18081"))?;
    // ::1 is left out of the DNAT: the port proxy answers there.
    wait_page("[::1]:18081")?;
    // db's /etc/hosts names it by its IPv6 address too (a later peer's
    // lines: the hosts_file unit test; no extra microVM boot here).
    let o = h.hull(&[
        "exec",
        "db",
        "grep",
        &format!("^{ip6}[[:space:]]"),
        "/etc/hosts",
    ])?;
    check(o.code == Some(0), || {
        format!("db's /etc/hosts lacks its IPv6 address: {o}")
    })?;
    // busybox's nc takes the name's IPv4 address first (RFC 6724 ranks a
    // unique local address below IPv4): look up AAAA, then connect to it.
    let by_name = format!(
        "a=$(nslookup -type=aaaa db | sed -n 's/^Address: *\\(fd00:77:[0-9a-f:]*\\)$/\\1/p'); \
         echo \"db is $a\" >&2; [ \"$a\" = {ip6} ] && {}",
        fetch_cmd("$a")
    );
    let o = h.hull(&["exec", "early", "sh", "-c", &by_name])?;
    check(o.code == Some(0) && o.stdout.ends_with(PAGE), || {
        format!("a container started before db could not fetch from it over IPv6 by name: {o}")
    })?;
    let o = h.hull(&["rm", "-f", "early", "db"])?;
    check(o.code == Some(0), || format!("rm -f: {o}"))?;
    let left = Command::new("nft")
        .args(["list", "table", "ip6", "hull"])
        .output()?;
    check(!left.status.success(), || {
        format!(
            "ip6 hull left after the last container went:\n{}",
            String::from_utf8_lossy(&left.stdout)
        )
    })
}

fn network_connect_and_disconnect(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.hull(&["network", "create", "other"])?;
    check(o.code == Some(0), || format!("network create: {o}"))?;
    let o = h.hull(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "fd00:79::/64",
        "dual",
    ])?;
    check(o.code == Some(0), || format!("network create --ipv6: {o}"))?;
    if b == "vm" {
        h.detach(&["--name", "v"], &["sleep", "1000"])?;
        let o = h.hull(&["network", "connect", "other", "v"])?;
        return check(
            o.code == Some(125) && o.stderr.contains("hot-plug") && o.stderr.lines().count() == 1,
            || format!("connect of a microVM must be refused in one line: {o}"),
        );
    }
    h.httpd(&["--name", "web"])?;
    // --ip6 as `run --ip6`: in the IPv6 subnet of a network made with
    // --ipv6, else exit 125 in one line, and nothing joined.
    for (args, what) in [
        (&["--ip6", "fd00:80::5", "dual", "web"], "outside"),
        (&["--ip6", "fd00:79::1", "dual", "web"], "outside"),
        (&["--ip6", "fd00:79::5", "other", "web"], "no IPv6 subnet"),
    ] {
        let o = h.hull(&[&["network", "connect"][..], args].concat())?;
        check(
            o.code == Some(125) && o.stderr.trim().lines().count() == 1 && o.stderr.contains(what),
            || format!("connect {args:?}: want exit 125 and one line with {what:?}; {o}"),
        )?;
    }
    let o = h.hull(&["network", "connect", "--ip6", "fd00:79::42", "dual", "web"])?;
    check(o.code == Some(0), || format!("network connect --ip6: {o}"))?;
    wait_page("[fd00:79::42]:80")?;
    let o = h.hull(&["network", "connect", "--alias", "www", "other", "web"])?;
    check(o.code == Some(0), || format!("network connect: {o}"))?;
    let o = h.hull(&["network", "inspect", "other"])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    let ip = v[0]["containers"][0]["ip"]
        .as_str()
        .ok_or_else(|| format!("web is not on other after connect: {o}"))?
        .to_string();
    wait_page(&format!("{ip}:80"))?;
    check(container_fetches(&h, "other", "www")?, || {
        "a container on other could not fetch from web by its alias after connect".into()
    })?;
    let o = h.hull(&["network", "connect", "other", "web"])?;
    check(
        o.code == Some(125) && o.stderr.contains("already on network other"),
        || format!("a second connect: {o}"),
    )?;
    let o = h.hull(&["network", "disconnect", "other", "web"])?;
    check(o.code == Some(0), || format!("network disconnect: {o}"))?;
    check(http_get(&format!("{ip}:80")).is_err(), || {
        format!("web still answers on other's address {ip} after disconnect")
    })?;
    let o = h.hull(&["network", "disconnect", "dual", "web"])?;
    check(o.code == Some(0), || {
        format!("network disconnect dual: {o}")
    })?;
    let veths = links().into_iter().filter(|l| l.starts_with("hv")).count();
    check(veths == 1, || {
        format!("want web's first veth only after disconnect: {:?}", links())
    })?;
    let o = h.hull(&["rm", "-f", "web"])?;
    check(o.code == Some(0), || format!("rm -f: {o}"))?;
    check(h.leases().is_empty(), || {
        format!("leases left after rm -f: {:?}", h.leases())
    })
}

fn networks_are_isolated_and_internal_stays_inside(b: &'static str) -> Result<(), Failed> {
    outside_service()?;
    let h = Hull::new(b);
    for args in [
        &["network", "create", "--subnet", "10.77.1.0/24", "one"][..],
        &["network", "create", "--subnet", "10.77.2.0/24", "two"],
        &[
            "network",
            "create",
            "--internal",
            "--subnet",
            "10.77.3.0/24",
            "closed",
        ],
    ] {
        let o = h.hull(args)?;
        check(o.code == Some(0), || format!("{args:?}: {o}"))?;
    }
    // The two servers start at once (their microVMs boot side by side).
    h.httpds(&[
        &["--network", "one", "--ip", "10.77.1.10"],
        &["--network", "closed", "--ip", "10.77.3.10"],
    ])?;
    wait_page("10.77.1.10:80")?;
    wait_page("10.77.3.10:80")?;
    check(container_fetches(&h, "one", "10.77.1.10")?, || {
        "a container could not reach another on its own network".into()
    })?;
    // One client per network, each checking both ways out of it: the
    // other network (must fail) or its own peer, and the outside service.
    let probe = |net: &str, server: &str| -> Result<Out, Failed> {
        h.run(
            &["--rm", "--network", net],
            &[
                "sh",
                "-c",
                &format!(
                    "if {}; then echo PEER-REACHED; fi; nc -w 5 {OUTSIDE} 9 </dev/null",
                    fetch_cmd(server)
                ),
            ],
        )
    };
    let o = probe("two", "10.77.1.10")?;
    check(!o.stdout.contains(PAGE), || {
        format!("a container on network two reached one on network one: {o}")
    })?;
    check(o.stdout.ends_with("outside\n") && o.code == Some(0), || {
        format!("a container on a plain network must reach the outside: {o}")
    })?;
    let o = probe("closed", "10.77.3.10")?;
    check(
        o.stdout.contains(PAGE) && o.stdout.contains("PEER-REACHED"),
        || format!("containers on one --internal network must reach each other: {o}"),
    )?;
    check(!o.stdout.contains("outside\n") && o.code != Some(0), || {
        format!("a container on an --internal network reached the outside: {o}")
    })
}

fn network_none_has_only_lo_and_the_default_is_bridge(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.run(&["--rm", "--network", "none"], &["ip", "-o", "link"])?;
    check(o.code == Some(0), || format!("{o}"))?;
    // lo, up; nothing else that could carry a packet (the guest kernel's
    // own sit0 tunnel may be listed, down and without an address).
    let up: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.contains(",UP") || l.contains("<UP"))
        .filter_map(|l| l.split(": ").nth(1))
        .collect();
    check(up == ["lo"], || format!("want only lo up; {o}"))?;
    check(!o.stdout.contains("link/ether"), || {
        format!("an ethernet device with --network none; {o}")
    })?;
    // Without --network: the default network `bridge`, as docker's.
    let o = h.run(&["--rm"], &["ip", "-o", "-4", "addr", "show", "eth0"])?;
    check(o.code == Some(0), || format!("run without --network: {o}"))?;
    let v = h.hull(&["network", "inspect", "bridge"])?;
    let inspect: serde_json::Value =
        serde_json::from_str(&v.stdout).map_err(|e| format!("{e}: {v}"))?;
    let subnet = inspect[0]["subnet"]
        .as_str()
        .ok_or("no subnet in inspect")?;
    let net: Vec<&str> = subnet.split(['.', '/']).take(2).collect();
    check(
        o.stdout.contains(&format!("inet {}.{}.", net[0], net[1])),
        || format!("run without --network is not on bridge ({subnet}): {o}"),
    )
}

fn bad_input_is_one_line_and_leaves_nothing(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.hull(&["network", "create", "--subnet", "10.88.0.0/16", "first"])?;
    check(o.code == Some(0), || format!("network create: {o}"))?;
    h.httpd(&["--network", "first", "-p", "18081:80"])?;
    let (veths, leases) = (links(), h.leases());
    let one_line = |o: &Out, what: &str| {
        check(
            o.code == Some(125) && o.stderr.trim().lines().count() == 1 && o.stderr.contains(what),
            || format!("want exit 125 and one line with {what:?}; {o}"),
        )
    };
    let o = h.run(&["--rm", "--network", "first", "-p", "18081:80"], &["true"])?;
    one_line(&o, "already published")?;
    let o = h.run(
        &["--rm", "--network", "first", "--ip", "10.99.0.5"],
        &["true"],
    )?;
    one_line(&o, "outside")?;
    let o = h.hull(&["network", "create", "--subnet", "10.88.5.0/24", "second"])?;
    one_line(&o, "overlaps")?;
    let o = h.run(&["--rm", "--network", "nosuch"], &["true"])?;
    one_line(&o, "not found")?;
    check(links() == veths, || {
        format!("links changed: {veths:?} -> {:?}", links())
    })?;
    check(h.leases() == leases, || {
        format!("leases changed: {leases:?} -> {:?}", h.leases())
    })
}

fn kill_9_then_ps_reclaims(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let id = h.httpd(&["--network", "bridge", "-p", "18082:80"])?;
    wait_page("127.0.0.1:18082")?;
    let o = h.hull(&["inspect", &id])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    for who in ["monitor", "sandbox"] {
        if let Some(pid) = v[0][who]["pid"].as_i64() {
            // SAFETY: kill(2) of a process of the container this test made.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let o = h.hull(&["ps", "-a"])?;
    check(o.code == Some(0) && o.stdout.contains("Exited"), || {
        format!("ps: {o}")
    })?;
    check(h.leases().is_empty(), || {
        format!("the lease survived kill -9 and ps: {:?}", h.leases())
    })?;
    check(!hull_rules().contains("18082"), || {
        format!("the port survived kill -9 and ps:\n{}", hull_rules())
    })?;
    // The port is free again for another container, on IPv6 too: the
    // port proxy went with the killed monitor.
    h.httpd(&["--network", "bridge", "-p", "18082:80"])?;
    wait_page("127.0.0.1:18082")?;
    wait_page("[::1]:18082")
}

fn many_containers_with_published_ports(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let n = if b == "vm" { 4 } else { 20 };
    // All started at once, as a platform would.
    let ports: Vec<String> = (0..n).map(|i| format!("{}:80", 19000 + i)).collect();
    let flags: Vec<[&str; 4]> = ports
        .iter()
        .map(|p| ["--network", "bridge", "-p", p.as_str()])
        .collect();
    let flags: Vec<&[&str]> = flags.iter().map(|f| &f[..]).collect();
    let ids = h.httpds(&flags)?;
    for i in 0..n {
        wait_page(&format!("127.0.0.1:{}", 19000 + i))?;
    }
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.iter().map(String::as_str));
    let o = h.hull(&rm)?;
    check(o.code == Some(0), || format!("rm -f: {o}"))?;
    let left: Vec<String> = links()
        .into_iter()
        .filter(|l| l.starts_with("hv"))
        .collect();
    check(left.is_empty(), || format!("veths left: {left:?}"))?;
    check(hull_rules().is_empty(), || {
        format!("hull's table left with no container:\n{}", hull_rules())
    })?;
    check(h.leases().is_empty(), || {
        format!("leases left: {:?}", h.leases())
    })
}

fn network_host(b: &'static str) -> Result<(), Failed> {
    outside_service()?;
    let h = Hull::new(b);
    let o = h.run(&["--rm", "--network", "host"], &["ip", "-o", "addr"])?;
    if b == "vm" {
        check(
            o.code == Some(125) && o.stderr.contains("--network host"),
            || format!("a microVM with --network host: want 125 and why; {o}"),
        )
    } else {
        check(o.stdout.contains(OUTSIDE), || {
            format!("--network host must see the host's addresses; {o}")
        })
    }
}

fn network_commands(b: &'static str) -> Result<(), Failed> {
    let h = Hull::new(b);
    let o = h.hull(&[
        "network",
        "create",
        "--subnet",
        "10.66.0.0/24",
        "--gateway",
        "10.66.0.254",
        "mine",
    ])?;
    check(o.code == Some(0) && o.stdout.trim().len() == 64, || {
        format!("create: {o}")
    })?;
    let o = h.hull(&["network", "ls", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).map_err(|e| format!("{e}: {o}"))?;
    let names: Vec<&str> = v
        .as_array()
        .ok_or("ls --json: not an array")?
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    check(names == ["bridge", "mine"], || format!("ls: {o}"))?;
    // One container for every per-container flag (one microVM boot):
    // the network's first address, its gateway as the default route,
    // --hostname, --add-host, --dns and --mac-address.
    let o = h.run(
        &[
            "--rm",
            "--network",
            "mine",
            "--hostname",
            "box",
            "--add-host",
            "extra.test:10.1.2.3",
            "--dns",
            "10.66.0.53",
            "--mac-address",
            "02:00:00:00:00:42",
        ],
        &[
            "sh",
            "-c",
            "ip -o -4 addr show eth0; ip route; cat /etc/hosts /etc/resolv.conf; hostname; \
             cat /sys/class/net/eth0/address; ip -o link show eth0",
        ],
    )?;
    for want in [
        "10.66.0.1/24",
        "default via 10.66.0.254",
        "box",
        "10.1.2.3\textra.test",
        "nameserver 10.66.0.53",
        "02:00:00:00:00:42",
    ] {
        check(o.stdout.contains(want), || format!("want {want:?}; {o}"))?;
    }
    let o = h.hull(&["network", "rm", "mine"])?;
    check(o.code == Some(0), || format!("rm: {o}"))?;
    let o = h.hull(&["network", "rm", "bridge"])?;
    check(
        o.code == Some(1) && o.stderr.contains("cannot be removed"),
        || format!("rm bridge: {o}"),
    )?;
    h.hull(&["network", "create", "spare"])?;
    let o = h.hull(&["network", "prune"])?;
    check(o.stdout == "spare\n", || format!("prune: {o}"))
}

/// The scenarios for `backend`; each runs in a network namespace of its
/// own (see the module docs).
pub fn trials(backend: &'static str) -> Vec<Trial> {
    type Scenario = fn(&'static str) -> Result<(), Failed>;
    let all: [(&str, Scenario); 12] = [
        (
            "published_port_answers_on_host_addresses",
            published_port_answers_on_host_addresses,
        ),
        ("published_udp_port_echoes", published_udp_port_echoes),
        (
            "containers_reach_each_other_by_name_and_alias",
            containers_reach_each_other_by_name_and_alias,
        ),
        (
            "containers_reach_each_other_over_ipv6_by_name",
            containers_reach_each_other_over_ipv6_by_name,
        ),
        (
            "networks_are_isolated_and_internal_stays_inside",
            networks_are_isolated_and_internal_stays_inside,
        ),
        (
            "network_none_has_only_lo_and_the_default_is_bridge",
            network_none_has_only_lo_and_the_default_is_bridge,
        ),
        (
            "bad_input_is_one_line_and_leaves_nothing",
            bad_input_is_one_line_and_leaves_nothing,
        ),
        ("kill_9_then_ps_reclaims", kill_9_then_ps_reclaims),
        (
            "many_containers_with_published_ports",
            many_containers_with_published_ports,
        ),
        ("network_host", network_host),
        ("network_commands", network_commands),
        (
            "network_connect_and_disconnect",
            network_connect_and_disconnect,
        ),
    ];
    all.into_iter()
        .map(|(name, f)| {
            let full = format!("{backend}::{name}");
            let exact = full.clone();
            Trial::test(full, move || {
                if std::env::var_os(INNER).is_some() {
                    inner_setup()?;
                    f(backend)
                } else {
                    in_own_netns(&exact)
                }
            })
        })
        .collect()
}

/// Inside the trial's namespace: loopback up.
fn inner_setup() -> Result<(), Failed> {
    let o = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()?;
    check(o.status.success(), || {
        format!("ip link set lo up: {}", String::from_utf8_lossy(&o.stderr))
    })
}

/// Runs trial `name` alone in this binary, under `unshare --net`.
fn in_own_netns(name: &str) -> Result<(), Failed> {
    let exe = std::env::current_exe()?;
    let mut c = Command::new("unshare");
    c.args(["--net", "--"])
        .arg(exe)
        .args([name, "--exact", "--test-threads", "1"])
        .env(INNER, "1");
    let t = Instant::now();
    let o = run(c)?;
    eprintln!("{name}: {:.1} s", t.elapsed().as_secs_f64());
    let passed = o.code == Some(0) && o.stdout.contains("1 passed");
    check(passed, || {
        format!(
            "in its own network namespace:\n{}\n{}",
            o.stdout.trim(),
            o.stderr.trim()
        )
    })
}
