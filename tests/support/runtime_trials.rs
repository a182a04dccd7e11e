//! The hull-runtime trials, run with the namespace backend on this host
//! (tests/runtime_ns.rs) and with microVMs in the emulated KVM host
//! (tests/runtime_vm.rs): what a user of podman, docker or ctr sees.
#![allow(dead_code)] // each test target uses its own subset

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use super::engines::{self, Containerd, Dockerd, IMAGE, Netns, Podman, ULIMITS, text};

/// Builds what the engines run: hull-runtime, hull-vmm and the static agent.
pub fn build() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo)
        // Not `-p hull`: cargo built hull-runtime and hull for this test
        // already, with the test build's features (tests/support/hull_proc.rs).
        .args(["build", "--quiet", "-p", "hull-vmm"])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build of hull-vmm failed");
    let status = Command::new(repo.join("agent/build-static.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running agent/build-static.sh");
    assert!(status.success(), "agent/build-static.sh failed");
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(msg().into()) }
}

fn trial(name: &str, backend: &'static str, f: fn(&'static str) -> Result<(), Failed>) -> Trial {
    Trial::test(format!("{backend}::{name}"), move || f(backend))
}

/// The engine trials for `backend` (`ns` or `vm`).
pub fn engine_trials(backend: &'static str) -> Vec<Trial> {
    let mut t = vec![
        trial(
            "podman_run_rm_output_and_exit_status",
            backend,
            podman_run_rm,
        ),
        trial(
            "podman_detached_exec_logs_stop_rm",
            backend,
            podman_detached,
        ),
        trial("podman_serves_on_its_network", backend, podman_network),
        trial("podman_volume_and_tmpfs", backend, podman_volume_tmpfs),
    ];
    if backend == "vm" {
        // Every docker and ctr check on one containerd and one dockerd:
        // their start is the slow part in the emulated host.
        t.push(trial(
            "docker_ctr_on_one_containerd",
            backend,
            docker_and_ctr,
        ));
    } else {
        t.extend([
            trial("docker_exit_status", backend, docker_exit_status),
            trial("podman_publish_and_volume", backend, podman_publish_volume),
            trial("podman_run_it_through_a_pty", backend, podman_tty),
            trial(
                "docker_publish_volume_exec_it",
                backend,
                docker_publish_exec,
            ),
            trial(
                "docker_compose_two_services_by_name",
                backend,
                docker_compose,
            ),
            trial("containerd_ctr_run", backend, containerd_run),
        ]);
    }
    t
}

fn podman_run_rm(_backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, _backend);
    p.load_busybox();
    // The process's privileges as the spec gives them, applied by the
    // agent (in the guest for a microVM): no capabilities left, an
    // additional group, no_new_privs, podman's default seccomp profile.
    let args = run_args(
        &[
            "--rm",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--group-add",
            "1234",
            "--security-opt",
            "no-new-privileges",
        ],
        "echo hi; uname -r; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; id -G; exit 3",
    );
    let o = p.run(&args);
    let (code, out, err) = text(&o);
    check(code == Some(3), || {
        format!("exit status {code:?}, want 3\n{out}\n{err}")
    })?;
    check(out.starts_with("hi\n"), || {
        format!("stdout {out:?}, want hi first")
    })?;
    let host = String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout)
        .trim()
        .to_string();
    let kernel = out.lines().nth(1).unwrap_or("");
    if _backend == "vm" {
        check(kernel != host, || {
            format!("uname -r {kernel} in the container is the host's: not a microVM")
        })?;
    }
    let status: Vec<&str> = out.lines().skip(2).take(4).collect();
    check(
        status
            == [
                "CapEff:\t0000000000000000",
                "CapBnd:\t0000000000000000",
                "NoNewPrivs:\t1",
                "Seccomp:\t2",
            ],
        || format!("--cap-drop ALL, no-new-privileges, podman's seccomp profile: {status:?}"),
    )?;
    let groups = out.lines().nth(6).unwrap_or("");
    check(groups.split(' ').any(|g| g == "1234"), || {
        format!("id -G {groups:?} lacks --group-add 1234")
    })?;
    // podman's cleanup (conmon's exit command) deletes after run returns.
    let left = engines::wait_empty(&p.runtime_root());
    check(left.is_empty(), || {
        format!("--rm left containers behind: {left}")
    })
}

fn podman_detached(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, backend);
    p.load_busybox();
    p.ok(&run_args(
        &["-d", "--name", "d", "--network", "none"],
        "trap 'echo main-got-usr1' USR1; echo started; while :; do sleep 1; done",
    ));
    let o = p.run(&["exec", "d", "sh", "-c", "echo in-exec; exit 4"]);
    let (code, out, err) = text(&o);
    check(code == Some(4), || {
        format!("exec exited {code:?}, want 4: {err}")
    })?;
    check(out.trim() == "in-exec", || format!("exec printed {out:?}"))?;
    // podman's default capabilities for root (podman 4.3: CHOWN,
    // DAC_OVERRIDE, FOWNER, FSETID, KILL, NET_BIND_SERVICE, SETFCAP, SETGID,
    // SETPCAP, SETUID, SYS_CHROOT), as runc gives them, in an exec too.
    let caps = p.ok(&["exec", "d", "grep", "^CapEff:", "/proc/self/status"]);
    check(caps.trim() == "CapEff:\t00000000800405fb", || {
        format!("podman's default capabilities in an exec: {caps:?}")
    })?;
    // `kill --all` with a signal other than SIGKILL: the main process and
    // an exec'd one both get it (through the agent, in the guest).
    p.ok(&[
        "exec",
        "-d",
        "d",
        "sh",
        "-c",
        "trap 'echo exec-got-usr1 > /tmp/got' USR1; touch /tmp/ready; while :; do sleep 1; done",
    ]);
    let ready = poll(20, || {
        p.run(&["exec", "d", "test", "-e", "/tmp/ready"])
            .status
            .success()
    });
    check(ready, || "the exec'd process did not start".into())?;
    let id = p.ok(&["inspect", "-f", "{{.Id}}", "d"]);
    let root = p.runtime_root();
    let o = ns
        .cmd(engines::runtime_bin())
        .arg("--root")
        .arg(&root)
        .args(["kill", "--all", id.trim(), "USR1"])
        .output()?;
    check(o.status.success(), || format!("kill --all: {:?}", text(&o)))?;
    let got = poll(20, || {
        p.run(&["exec", "d", "cat", "/tmp/got"]).stdout == b"exec-got-usr1\n"
    });
    check(got, || {
        "the exec'd process did not get kill --all's USR1".into()
    })?;
    let logs = poll(20, || p.ok(&["logs", "d"]).contains("main-got-usr1"));
    check(logs, || {
        "the main process did not get kill --all's USR1".into()
    })?;
    let logs = p.ok(&["logs", "d"]);
    check(logs.contains("started"), || format!("logs: {logs:?}"))?;
    let state = p.ok(&["inspect", "-f", "{{.State.Status}}", "d"]);
    check(state.trim() == "running", || format!("state {state:?}"))?;
    p.ok(&["stop", "-t", "5", "d"]);
    let code = p.ok(&["inspect", "-f", "{{.State.ExitCode}}", "d"]);
    check(code.trim() == "143", || {
        format!("exit code after stop: {code:?}, want 143 (SIGTERM)")
    })?;
    p.ok(&["rm", "d"]);
    let left = engines::runtime_list(&p.runtime_root());
    check(left.is_empty(), || format!("rm left {left}"))
}

/// httpd in the container, reached at its IPv4 and IPv6 addresses on the
/// engine's bridge and at the port CNI's portmap publishes on the test's
/// localhost; it serves the container's routes, which are the network's
/// (the CNI config's extra route per family too).
fn podman_network(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, backend);
    p.load_busybox();
    p.ok(&run_args(
        &["-d", "--name", "web", "--network", "hullnet", "-p", "8082:80"],
        "mkdir /www && echo served-by-hull > /www/index.html && { ip route; ip -6 route; } > /www/routes && exec httpd -f -p 80 -h /www",
    ));
    let ip = p.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.hullnet.IPAddress}}",
        "web",
    ]);
    let ip6 = p.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.Networks.hullnet.GlobalIPv6Address}}",
        "web",
    ]);
    let body = curl(&ns, &format!("http://{}/", ip.trim()), 30);
    let published = curl(&ns, "http://127.0.0.1:8082/", 20);
    // The engine's IPv6 address too (a microVM's guest takes it over).
    let body6 = curl(&ns, &format!("http://[{}]/", ip6.trim()), 20);
    let routes = curl(&ns, &format!("http://[{}]/routes", ip6.trim()), 20).unwrap_or_default();
    p.ok(&["rm", "-f", "web"]);
    for (dst, via) in [
        (engines::ROUTE4, engines::ROUTE4_VIA),
        (engines::ROUTE6, engines::ROUTE6_VIA),
    ] {
        let want = format!("{dst} via {via} ");
        check(routes.lines().any(|l| l.starts_with(&want)), || {
            format!("the container has no route {want:?}, as the network has: {routes:?}")
        })?;
    }
    check(body6.as_deref() == Some("served-by-hull\n"), || {
        format!("curl of the container's IPv6 address {ip6:?}: {body6:?}")
    })?;
    check(body.as_deref() == Some("served-by-hull\n"), || {
        format!("curl of the container at {ip}: {body:?}")
    })?;
    check(published.as_deref() == Some("served-by-hull\n"), || {
        format!("curl of the published port 127.0.0.1:8082: {published:?}")
    })
}

/// Whether `f` holds within `secs` s (tried every 300 ms).
fn poll(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// curl URL from inside `ns`, retrying for up to `secs` s.
fn curl(ns: &Netns, url: &str, secs: u64) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let o = ns
            .cmd("curl")
            .args(["-s", "--max-time", "3", url])
            .output()
            .ok()?;
        if o.status.success() {
            return Some(String::from_utf8_lossy(&o.stdout).into_owned());
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn podman_publish_volume(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, backend);
    p.load_busybox();
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "from-the-host\n")?;
    let vol = format!("{}:/www", www.path().display());
    p.ok(&run_args(
        &[
            "-d",
            "--name",
            "web",
            "--network",
            "hullnet",
            "-p",
            "8080:80",
            "-v",
            &vol,
        ],
        "echo written > /www/by-container; exec httpd -f -p 80 -h /www",
    ));
    let body = curl(&ns, "http://127.0.0.1:8080/", 20);
    p.ok(&["rm", "-f", "web"]);
    check(body.as_deref() == Some("from-the-host\n"), || {
        format!("curl of the published port: {body:?}")
    })?;
    check_written(&www.path().join("by-container"))
}

/// podman's `run` arguments: `opts`, the rlimits this machine allows, the
/// image and `sh -c script`.
fn run_args<'a>(opts: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend(opts);
    args.extend(ULIMITS);
    args.extend([IMAGE, "sh", "-c", script]);
    args
}

/// That the container wrote `written` to `file` in a `-v` directory.
fn check_written(file: &Path) -> Result<(), Failed> {
    let written = std::fs::read_to_string(file).unwrap_or_default();
    check(written == "written\n", || {
        format!("the container's write to the -v dir: {written:?}")
    })
}

/// `-v` a host directory both ways and `--tmpfs` (in a microVM: virtio-fs
/// and the agent's tmpfs; the root is the bundle's directory over virtio-fs).
fn podman_volume_tmpfs(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, backend);
    p.load_busybox();
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("in"), "from-the-host\n")?;
    let vol = format!("{}:/data", dir.path().display());
    let o = p.run(&run_args(
        &[
            "--rm",
            "--network",
            "none",
            "-v",
            &vol,
            "--tmpfs",
            "/scratch:size=1m",
        ],
        "cat /data/in; echo written > /data/out; grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
    ));
    let (code, out, err) = text(&o);
    check(code == Some(0), || {
        format!("exit status {code:?}\n{out}\n{err}")
    })?;
    check(out == "from-the-host\ntmpfs\n", || {
        format!("stdout {out:?}: want the host's file, then tmpfs for /scratch\n{err}")
    })?;
    check_written(&dir.path().join("out"))
}

fn podman_tty(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let p = Podman::new(&ns, backend);
    p.load_busybox();
    let mut args = vec!["run", "--rm", "-it", "--network", "none"];
    args.extend(ULIMITS);
    args.extend([IMAGE, "sh"]);
    let (code, out) = engines::run_in_pty(
        p.cmd(&args),
        &[
            "tty; echo typed-$((6*7))\n",
            "\0resize 33 111",
            "echo size-$(stty size | tr ' ' x)\n",
            "exit 5\n",
        ],
        Duration::from_secs(60),
    );
    check(code == Some(5), || {
        format!("exit status {code:?}, want 5\n{out}")
    })?;
    check(
        out.contains("typed-42") && out.contains("/dev/pts/"),
        || format!("the shell's terminal output: {out:?}"),
    )?;
    check(out.contains("size-33x111"), || {
        format!("the window size change did not reach the container: {out:?}")
    })
}

/// dockerd's runtime name for `backend`.
fn docker_runtime(backend: &str) -> &'static str {
    if backend == "ns" { "hull-ns" } else { "hull" }
}

fn docker_exit_status(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let d = Dockerd::start(&ns);
    docker_exit_status_in(&d, backend)
}

/// `ctr run`, and docker's exit status, `-p`, `-v` and `exec -it`, on one
/// containerd the test started (ctr's and dockerd's).
fn docker_and_ctr(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let c = Containerd::start(&ns, backend);
    let d = Dockerd::start_on(&ns, Some(&c));
    containerd_run_in(&c)?;
    docker_exit_status_in(&d, backend)?;
    docker_publish_exec_in(&ns, &d, backend)
}

fn docker_exit_status_in(d: &Dockerd, backend: &str) -> Result<(), Failed> {
    let runtime = docker_runtime(backend);
    let o = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        IMAGE,
        "sh",
        "-c",
        "echo hi; exit 3",
    ]);
    let (code, out, err) = text(&o);
    check(code == Some(3), || {
        format!("docker run exited {code:?}, want 3\n{out}\n{err}")
    })?;
    check(out == "hi\n", || format!("stdout {out:?}"))?;
    let left = engines::wait_empty(&d.runtime_root());
    check(left.is_empty(), || format!("--rm left {left}"))
}

fn docker_publish_exec(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let d = Dockerd::start(&ns);
    docker_publish_exec_in(&ns, &d, backend)
}

fn docker_publish_exec_in(ns: &Netns, d: &Dockerd, backend: &str) -> Result<(), Failed> {
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "docker-volume\n")?;
    let vol = format!("{}:/www", www.path().display());
    // A user-defined network: its containers resolve each other's names
    // through docker's embedded resolver (127.0.0.11; a microVM's queries
    // go through hull's DNS relay), as docker-compose's services do.
    let o = d.docker(&["network", "create", "hullnet"]);
    check(o.status.success(), || {
        format!("docker network create: {:?}", text(&o))
    })?;
    let o = d.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "hullnet",
        "--runtime",
        docker_runtime(backend),
        "-p",
        "8081:80",
        "-v",
        &vol,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    check(o.status.success(), || {
        format!("docker run -d: {:?}", text(&o))
    })?;
    let body = curl(ns, "http://127.0.0.1:8081/", 30);
    let (code, out) = engines::run_in_pty(
        d.cmd(&["exec", "-it", "web", "sh"]),
        &["echo in-$((40+2))\n", "wget -qO- http://web/\n", "exit 6\n"],
        Duration::from_secs(60),
    );
    let _ = d.docker(&["rm", "-f", "web"]);
    let _ = d.docker(&["network", "rm", "hullnet"]);
    check(body.as_deref() == Some("docker-volume\n"), || {
        format!("curl of docker's published port: {body:?}")
    })?;
    check(code == Some(6) && out.contains("in-42"), || {
        format!("docker exec -it: status {code:?}, output {out:?}")
    })?;
    check(out.contains("docker-volume"), || {
        format!("wget http://web/ by the container's name on its docker network: {out:?}")
    })
}

fn docker_compose(backend: &'static str) -> Result<(), Failed> {
    engines::require("docker-compose");
    let ns = Netns::new();
    let d = Dockerd::start(&ns);
    docker_compose_in(&ns, &d, backend)
}

/// Two services of a compose project on its network, `runtime:` hull's:
/// the client fetches the web service's page by its service name.
fn docker_compose_in(ns: &Netns, d: &Dockerd, backend: &str) -> Result<(), Failed> {
    let proj = tempfile::tempdir()?;
    let runtime = docker_runtime(backend);
    let compose = format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: {IMAGE}\n    runtime: {runtime}\n    command: [\"sh\", \"-c\", \"mkdir /www && echo from-web > /www/index.html && exec httpd -f -p 80 -h /www\"]\n  client:\n    image: {IMAGE}\n    runtime: {runtime}\n    depends_on: [web]\n    command: [\"timeout\", \"60\", \"sh\", \"-c\", \"until wget -qO- http://web/; do sleep 1; done\"]\n"
    );
    let file = proj.path().join("docker-compose.yml");
    std::fs::write(&file, compose)?;
    let compose = |args: &[&str], limit: u64| {
        let mut c = ns.cmd("docker-compose");
        c.current_dir(proj.path())
            .env("DOCKER_HOST", d.host())
            .arg("-f")
            .arg(&file)
            .args(["-p", "hulltest"])
            .args(args);
        engines::output_within(c, Duration::from_secs(limit))
    };
    let up = compose(
        &[
            "up",
            "--abort-on-container-exit",
            "--exit-code-from",
            "client",
        ],
        300,
    );
    let Some(o) = up else {
        let ps = d.docker(&["ps", "-a"]);
        let logs = d.docker(&["logs", "hulltest_client_1"]);
        return Err(format!(
            "docker-compose up did not end within 300 s; docker ps -a:\n{}\nthe client's logs: {:?}\ndockerd's log ends with:\n{}",
            String::from_utf8_lossy(&ps.stdout),
            text(&logs),
            d.log_tail()
        )
        .into());
    };
    let _ = compose(&["down"], 120);
    let (code, out, err) = text(&o);
    check(code == Some(0) && out.contains("from-web"), || {
        format!("docker-compose up: status {code:?}\n{out}\n{err}")
    })
}

fn containerd_run(backend: &'static str) -> Result<(), Failed> {
    let ns = Netns::new();
    let c = Containerd::start(&ns, backend);
    containerd_run_in(&c)
}

/// `ctr run --rm` through the runc v2 shim with hull-runtime as its runc:
/// the output and the exit status.
fn containerd_run_in(c: &Containerd) -> Result<(), Failed> {
    let bin = engines::runtime_bin();
    let args = [
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        bin.to_str().unwrap(),
        IMAGE,
        "c1",
        "sh",
        "-c",
        "echo hi-from-ctr; exit 3",
    ];
    let limit = Duration::from_secs(240);
    let Some(o) = c.ctr_within(&args, limit) else {
        let ps = Command::new("ps")
            .args(["-eo", "pid,ppid,etime,args"])
            .output()?;
        return Err(format!(
            "ctr run did not end within {limit:?}; containerd's log ends with:\n{}\nprocesses:\n{}",
            c.log_tail(),
            String::from_utf8_lossy(&ps.stdout)
        )
        .into());
    };
    let (code, out, err) = text(&o);
    check(code == Some(3) && out.contains("hi-from-ctr"), || {
        format!("ctr run: status {code:?}\n{out}\n{err}")
    })
}

/// Bad bundles: one line on stderr and in --log's JSON, a non-zero exit,
/// nothing left under --root.
pub fn bundle_trials() -> Vec<Trial> {
    vec![Trial::test("bundle::bad_bundles_fail_cleanly", bad_bundles)]
}

fn bad_bundles() -> Result<(), Failed> {
    let root = tempfile::tempdir()?;
    let cases: [(&str, &str, &str); 3] = [
        (
            "missing-root",
            r#"{"ociVersion":"1.0.2","root":{"path":"nope"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
            "not a directory",
        ),
        (
            "malformed",
            "{\"ociVersion\": ",
            "not a valid OCI runtime config",
        ),
        (
            "bad-namespace",
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"bogus"}]}}"#,
            "bogus",
        ),
    ];
    for (name, config, want) in cases {
        let bundle = tempfile::tempdir()?;
        std::fs::create_dir(bundle.path().join("rootfs"))?;
        std::fs::write(bundle.path().join("config.json"), config)?;
        let log = root.path().join(format!("{name}.log"));
        let o = Command::new(engines::runtime_bin())
            .arg("--root")
            .arg(root.path())
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle.path())
            .arg(name)
            .output()?;
        let (code, _, err) = text(&o);
        check(code.is_some_and(|c| c != 0), || {
            format!("{name}: exit {code:?}")
        })?;
        check(
            err.lines().count() == 1 && err.starts_with("hull-runtime: ") && err.contains(want),
            || format!("{name}: stderr {err:?}, want one line with {want:?}"),
        )?;
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(logged.trim())
            .map_err(|e| format!("{name}: --log holds {logged:?}, not one JSON line: {e}"))?;
        check(
            line["level"] == "error" && line["msg"].as_str().is_some_and(|m| m.contains(want)),
            || format!("{name}: --log line {line}"),
        )?;
    }
    let left = engines::runtime_list(root.path());
    check(left.is_empty(), || format!("bad bundles left {left}"))
}
