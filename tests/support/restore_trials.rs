//! `hull run` from templates (docs/snapshots.md), end to end: clones of
//! one template are not copies of each other, their clocks are the host's,
//! a broken template is refused in one line and made again, and idle
//! restored microVMs take less memory than a cold-booted one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};

use super::scenarios::{busybox, hull_bin};

/// What the restored web server serves.
const PAGE: &str = "hello from a restored microVM\n";

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

fn rootfs() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        busybox::rootfs(d.path());
        std::fs::create_dir_all(d.path().join("www")).expect("www");
        std::fs::write(d.path().join("www/index.html"), PAGE).expect("page");
        d
    })
    .path()
}

/// A state dir, and optionally a cache dir (templates) of its own.
struct Hull {
    state: tempfile::TempDir,
    cache: Option<tempfile::TempDir>,
    /// Containers get hull's default network (the caller is in a network
    /// namespace of its own); else `HULL_NETWORK=none`.
    networked: bool,
}

impl Hull {
    fn new(own_cache: bool) -> Hull {
        Hull {
            state: tempfile::tempdir().expect("tempdir"),
            cache: own_cache.then(|| tempfile::tempdir().expect("tempdir")),
            networked: false,
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(hull_bin());
        c.arg("--state-dir").arg(self.state.path()).args(args);
        if let Some(cache) = &self.cache {
            c.env("XDG_CACHE_HOME", cache.path());
        }
        c.env_remove("HULL_COLD_BOOT");
        if self.networked {
            c.env_remove("HULL_NETWORK");
        } else {
            // No bridge on the machine's own network.
            c.env("HULL_NETWORK", "none");
        }
        c
    }

    fn run(&self, flags: &[&str], cmd: &[&str]) -> Result<Output, Failed> {
        let mut c = self.cmd(&["run", "--rootfs"]);
        c.arg(rootfs()).args(flags).args(cmd);
        Ok(c.output()?)
    }

    /// `hull inspect NAME`'s "boot" field.
    fn boot(&self, name: &str) -> Result<String, Failed> {
        let out = self.cmd(&["inspect", name]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        Ok(v[0]["boot"].as_str().unwrap_or("none").to_string())
    }

    fn templates(&self) -> PathBuf {
        let cache = self.cache.as_ref().expect("a cache of its own");
        cache.path().join("hull/templates")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one container saw: 32 bytes of /dev/urandom, boot_id, hostname
/// and its wall clock (seconds).
#[derive(Debug, PartialEq)]
struct Seen {
    urandom: String,
    boot_id: String,
    hostname: String,
    clock: u64,
}

const LOOK: &str = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
                    cat /proc/sys/kernel/random/boot_id; hostname; date +%s";

/// The host's clock before and after a run, seconds.
#[derive(Debug, Clone, Copy)]
struct HostClock {
    before: u64,
    after: u64,
}

impl HostClock {
    /// Whether `guest` was read within 2 s of the host's clock: the guest
    /// read it between `before` and `after` (the run's start, its end).
    fn agrees(self, guest: u64) -> Result<(), Failed> {
        check(guest + 2 >= self.before && guest <= self.after + 2, || {
            format!("the guest's clock {guest} vs the host's {self:?}")
        })
    }
}

fn look(h: &Hull, name: &str, flags: &[&str]) -> Result<(Seen, HostClock), Failed> {
    let mut all = vec!["--name", name];
    all.extend_from_slice(flags);
    let before = now_s();
    let out = h.run(&all, &["sh", "-c", LOOK])?;
    let host = HostClock {
        before,
        after: now_s(),
    };
    let stdout = text(&out.stdout);
    check(out.status.success(), || {
        format!("{name}: {:?}\n{stdout}\n{}", out.status, text(&out.stderr))
    })?;
    let l: Vec<&str> = stdout.lines().collect();
    check(l.len() == 4, || format!("{name}: {stdout}"))?;
    let seen = Seen {
        urandom: l[0].into(),
        boot_id: l[1].into(),
        hostname: l[2].into(),
        clock: l[3].trim().parse().map_err(|_| format!("date: {}", l[3]))?,
    };
    Ok((seen, host))
}

fn clones_of_one_template_differ() -> Result<(), Failed> {
    let h = Hull::new(false);
    // The first may make the template; the next two are its clones.
    look(&h, "first", &[])?;
    let (a, host_a) = look(&h, "a", &[])?;
    let (b, host_b) = look(&h, "b", &[])?;
    eprintln!("clone a: {a:?}\nclone b: {b:?}");
    for n in ["a", "b"] {
        let boot = h.boot(n)?;
        check(boot == "restore", || format!("{n} booted {boot}"))?;
    }
    check(a.urandom.len() == 64 && a.urandom != b.urandom, || {
        format!("/dev/urandom: {} vs {}", a.urandom, b.urandom)
    })?;
    check(a.boot_id != b.boot_id, || {
        format!("the same boot_id {}", a.boot_id)
    })?;
    check(a.hostname != b.hostname, || {
        format!("the same hostname {}", a.hostname)
    })?;
    host_a.agrees(a.clock)?;
    host_b.agrees(b.clock)
}

/// Sets this host's wall clock (only ever inside the emulated KVM host,
/// which is this test's own machine).
fn set_clock(secs: i64, nanos: i64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nanos,
    };
    // SAFETY: a valid timespec for the duration of the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn a_template_an_hour_behind_still_gives_the_hosts_clock() -> Result<(), Failed> {
    let h = Hull::new(true);
    // The template's guest takes its wall clock from the host when it
    // boots: made while this host's clock is an hour back, it keeps that.
    let inside = std::env::var_os("HULL_IN_KVM_HOST").is_some();
    if inside {
        let t0 = Instant::now();
        let real = SystemTime::now().duration_since(UNIX_EPOCH)?;
        set_clock(real.as_secs() as i64 - 3600, i64::from(real.subsec_nanos()))?;
        let made = h.run(&["--rm"], &["true"]);
        let back = real + t0.elapsed();
        set_clock(back.as_secs() as i64, i64::from(back.subsec_nanos()))?;
        let made = made?;
        check(made.status.success(), || {
            format!("making the template: {}", text(&made.stderr))
        })?;
    } else {
        eprintln!("not in the emulated KVM host: the template's clock is not shifted");
    }
    let (s, host) = look(&h, "late", &[])?;
    let boot = h.boot("late")?;
    check(boot == "restore", || format!("booted {boot}"))?;
    eprintln!("guest clock {} host {host:?}", s.clock);
    host.agrees(s.clock)
}

/// The one template dir under `h`'s cache.
fn the_template(h: &Hull) -> Result<PathBuf, Failed> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(h.templates())?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("templates: {dirs:?}").into()),
    }
}

/// A run that finds its template broken: one line saying so, the template
/// made again, the container restored from it.
fn remade(h: &Hull, name: &str, want: &str) -> Result<(), Failed> {
    let out = h.run(&["--name", name], &["echo", "fine"])?;
    let err = text(&out.stderr);
    check(
        out.status.success() && text(&out.stdout) == "fine\n",
        || format!("{name}: {:?} {err}", out.status),
    )?;
    let said: Vec<&str> = err.lines().filter(|l| l.contains("is refused")).collect();
    check(said.len() == 1 && said[0].contains(want), || {
        format!("{name}: want one line with {want:?}: {err}")
    })?;
    check(said[0].contains("making it again"), || said[0].to_string())?;
    let boot = h.boot(name)?;
    check(boot == "restore", || format!("{name} booted {boot}"))
}

fn broken_templates_are_refused_and_made_again() -> Result<(), Failed> {
    let h = Hull::new(true);
    let out = h.run(&["--rm"], &["true"])?;
    check(out.status.success(), || text(&out.stderr))?;
    let t = the_template(&h)?;

    let mut state = std::fs::read(t.join("state"))?;
    let i = state.len() / 2;
    state[i] ^= 0x01;
    std::fs::write(t.join("state"), state)?;
    remade(&h, "flipped", "corrupted")?;

    let t = the_template(&h)?;
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(t.join("memory"))?;
    mem.set_len(mem.metadata()?.len() - 4096)?;
    drop(mem);
    remade(&h, "truncated", "truncated")?;

    // Another memory size's template where this size's should be.
    let out = h.run(&["--rm", "--memory", "128"], &["true"])?;
    check(out.status.success(), || text(&out.stderr))?;
    let dirs: Vec<PathBuf> = std::fs::read_dir(h.templates())?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.is_dir())
        .collect();
    let (small, big): (Vec<_>, Vec<_>) = dirs
        .into_iter()
        .partition(|d| std::fs::metadata(d.join("memory")).is_ok_and(|m| m.len() <= 128 << 20));
    let (Some(small), Some(big)) = (small.first(), big.first()) else {
        return Err("no 128 MiB and 256 MiB templates side by side".into());
    };
    for f in ["state", "memory"] {
        std::fs::copy(small.join(f), big.join(f))?;
    }
    remade(&h, "other-size", "128 MiB")
}

/// Proportional set size of `pid` and its children (a jailed VMM is the
/// child of its waiting parent), KiB.
fn pss_kib(pid: u32) -> u64 {
    let mut pids = vec![pid];
    let children = format!("/proc/{pid}/task/{pid}/children");
    if let Ok(c) = std::fs::read_to_string(children) {
        pids.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|r| {
            r.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

fn sandbox_pid(h: &Hull, name: &str) -> Result<u32, Failed> {
    let out = h.cmd(&["inspect", name]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["sandbox"]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| format!("no sandbox pid for {name}: {v}").into())
}

fn ten_idle_restored_microvms_take_less_memory_than_a_cold_one() -> Result<(), Failed> {
    let h = Hull::new(false);
    let start = |name: &str, flags: &[&str]| -> Result<u32, Failed> {
        let mut all = vec!["-d", "--name", name];
        all.extend_from_slice(flags);
        let out = h.run(&all, &["sleep", "100000"])?;
        check(out.status.success(), || {
            format!("{name}: {}", text(&out.stderr))
        })?;
        sandbox_pid(&h, name)
    };
    let result = (|| {
        let cold = start("cold", &["--cold-boot"])?;
        std::thread::sleep(Duration::from_secs(2));
        let cold_pss = pss_kib(cold);
        let _ = h.cmd(&["rm", "-f", "cold"]).output();
        let mut pss = Vec::new();
        let mut pids = Vec::new();
        for i in 0..10 {
            pids.push(start(&format!("r{i}"), &[])?);
        }
        std::thread::sleep(Duration::from_secs(2));
        for p in &pids {
            pss.push(pss_kib(*p));
        }
        let mean = pss.iter().sum::<u64>() / pss.len() as u64;
        eprintln!(
            "idle PSS per microVM: cold boot {cold_pss} KiB; ten restored {pss:?} KiB, mean {mean} KiB"
        );
        check(cold_pss > 0 && mean < cold_pss, || {
            format!("restored {mean} KiB each, cold {cold_pss} KiB")
        })
    })();
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let mut rm = h.cmd(&["rm", "-f"]);
    rm.args(&names);
    let _ = rm.output();
    result
}

/// Runs `f` on a thread of its own in a new network namespace (loopback
/// up): hull's bridge, veths, taps and nftables rules live and die there.
fn in_own_netns(f: fn() -> Result<(), Failed>) -> Result<(), Failed> {
    std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; it moves this thread only.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET) (needs root): {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
        let lo = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .output()?;
        check(lo.status.success(), || text(&lo.stderr))?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err("the trial's thread panicked".into()))
}

/// Restored clones on a network: one serves a page on a published port,
/// another fetches it by name over the network (on a network of their
/// own) and has the MAC hull gave it, not the template's; the host reaches
/// the published port. Both restored, not cold-booted.
fn networked_clones_reach_each_other_and_publish_a_port() -> Result<(), Failed> {
    let mut h = Hull::new(false);
    h.networked = true;
    let ok = |o: Output, what: &str| {
        check(o.status.success(), || {
            format!("{what}: {:?} {}", o.status, text(&o.stderr))
        })
        .map(|()| text(&o.stdout))
    };
    ok(
        h.cmd(&["network", "create", "tnet"]).output()?,
        "network create",
    )?;
    let result = (|| {
        let srv = h.run(
            &["-d", "--name", "srv", "--network", "tnet", "-p", "8080:80"],
            &["httpd", "-f", "-h", "/www"],
        )?;
        ok(srv, "srv")?;
        let got = h.run(
            &["--name", "client", "--network", "tnet"],
            &[
                "sh",
                "-c",
                "cat /sys/class/net/eth0/address; \
                 for i in $(seq 30); do wget -qO- http://srv/ && exit; sleep 1; done; exit 1",
            ],
        )?;
        let got = ok(got, "client")?;
        let (mac, page) = got.split_once('\n').unwrap_or_default();
        check(page == PAGE, || format!("client fetched {got:?}"))?;
        check(mac.len() == 17 && mac != "02:68:75:6c:6c:00", || {
            format!("the client's MAC is {mac:?} (the template's is 02:68:75:6c:6c:00)")
        })?;
        for n in ["srv", "client"] {
            let boot = h.boot(n)?;
            check(boot == "restore", || format!("{n} booted {boot}"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let page = std::net::TcpStream::connect("127.0.0.1:8080").and_then(|mut s| {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut r = String::new();
                s.read_to_string(&mut r)?;
                Ok(r)
            });
            match page {
                Ok(r) if r.ends_with(PAGE) => return Ok(()),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                other => return Err(format!("the published port 8080: {other:?}").into()),
            }
        }
    })();
    let _ = h.cmd(&["rm", "-f", "srv", "client"]).output();
    let _ = h.cmd(&["network", "rm", "tnet"]).output();
    result
}

/// A restored container with a volume (a host directory in a template's
/// fs slot) writes a file the host sees, through a read-only root and
/// beside a tmpfs mount (both told to the agent after restore).
fn a_restored_container_writes_to_a_volume() -> Result<(), Failed> {
    let h = Hull::new(false);
    let dir = tempfile::tempdir()?;
    let vol = format!("{}:/data", dir.path().display());
    let out = h.run(
        &[
            "--name",
            "vol",
            "-v",
            &vol,
            "--read-only",
            "--tmpfs",
            "/scratch",
        ],
        &[
            "sh",
            "-c",
            "echo from-the-guest > /scratch/t && cat /scratch/t > /data/f && \
             ! touch /rootfile 2>/dev/null && echo ro",
        ],
    )?;
    check(out.status.success() && text(&out.stdout) == "ro\n", || {
        format!(
            "{:?} {} {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    let got = std::fs::read_to_string(dir.path().join("f"))?;
    check(got == "from-the-guest\n", || {
        format!("the host reads {got:?}")
    })?;
    let boot = h.boot("vol")?;
    check(boot == "restore", || format!("booted {boot}"))
}

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "restore::clones_of_one_template_differ",
            clones_of_one_template_differ,
        ),
        Trial::test(
            "restore::a_template_an_hour_behind_still_gives_the_hosts_clock",
            a_template_an_hour_behind_still_gives_the_hosts_clock,
        ),
        Trial::test(
            "restore::broken_templates_are_refused_and_made_again",
            broken_templates_are_refused_and_made_again,
        ),
        Trial::test(
            "restore::networked_clones_reach_each_other_and_publish_a_port",
            || in_own_netns(networked_clones_reach_each_other_and_publish_a_port),
        ),
        Trial::test(
            "restore::a_restored_container_writes_to_a_volume",
            a_restored_container_writes_to_a_volume,
        ),
        Trial::test(
            "restore::ten_idle_restored_microvms_take_less_memory_than_a_cold_one",
            ten_idle_restored_microvms_take_less_memory_than_a_cold_one,
        ),
    ]
}
