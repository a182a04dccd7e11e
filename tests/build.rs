//! `hull build` end to end, RUN steps in the `ns` backend: the Dockerfile
//! under tests/build/compare built by hull and by buildah (Debian's, with a
//! root of its own, vfs storage, chroot isolation) from the same context
//! must give the same file tree and config; the layer cache; a failing RUN
//! and a syntax error; history, save, tag and push to a local registry
//! (Debian's docker-registry on 127.0.0.1) read back by skopeo and pulled
//! into an empty data dir.
//!
//! Needs root, the static agent (HULL_AGENT or agent/build-static.sh),
//! busybox-static, umoci, skopeo, buildah and docker-registry
//! (scripts/install-deps.sh); fails saying what is missing, and is reported
//! as ignored with `HULL_SKIP_NS_TESTS=1`, as the namespace suite is.

#[path = "support/build_env.rs"]
mod build_env;
#[path = "support/podman.rs"]
mod podman;
#[path = "support/registry.rs"]
mod registry;
#[path = "support/tree.rs"]
mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use build_env::{Env, require, sh};
use libtest_mimic::{Arguments, Failed, Trial};
use tree::{Node, walk};

/// The config fields both builders must agree on.
fn config_fields(layout: &Path, tag: &str) -> serde_json::Value {
    let json = sh(&format!(
        "skopeo inspect --config oci:{}:{tag}",
        layout.display()
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let c = &v["config"];
    let mut labels = c["Labels"].clone();
    if let Some(m) = labels.as_object_mut() {
        m.remove("io.buildah.version");
    }
    serde_json::json!({
        "Env": c["Env"], "Cmd": c["Cmd"], "Entrypoint": c["Entrypoint"],
        "WorkingDir": c["WorkingDir"], "User": c["User"],
        "ExposedPorts": c["ExposedPorts"], "Labels": labels,
        "Volumes": c["Volumes"], "StopSignal": c["StopSignal"],
    })
}

/// data.tar.gz for ADD: a directory, a file and a symlink.
fn write_tarball(ctx: &Path) {
    let f = fs::File::create(ctx.join("data.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    let mut entry = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        b.append_data(&mut h, path, data).unwrap();
    };
    entry("pkg/", tar::EntryType::Directory, b"", None);
    entry(
        "pkg/readme",
        tar::EntryType::Regular,
        b"from a tarball\n",
        None,
    );
    entry("pkg/current", tar::EntryType::Symlink, b"", Some("readme"));
    b.into_inner().unwrap().finish().unwrap();
}

fn same_as_buildah() -> Result<(), Failed> {
    require(&["buildah"]);
    let env = Env::new();
    let ctx = env.context("compare");
    write_tarball(&ctx);
    let (code, out, err) = env.build(&ctx, &["-t", "compare:latest"]);
    assert_eq!(code, 0, "hull build failed: {out}{err}");
    let hull_oci = env.t.path().join("hull-oci");
    let (code, _, err) = env.hull(&[
        "save",
        "--format",
        "oci",
        "-o",
        &hull_oci.display().to_string(),
        "compare:latest",
    ]);
    assert_eq!(code, 0, "{err}");

    // buildah, with storage of its own under the temp dir.
    let root = env.t.path().join("buildah");
    let b = format!(
        "buildah --root {r}/root --runroot {r}/run --storage-driver vfs",
        r = root.display()
    );
    sh(&format!(
        "skopeo copy --quiet oci:{}:latest 'containers-storage:[vfs@{r}/root+{r}/run]localhost/busybox:latest'",
        env.layout.display(),
        r = root.display()
    ));
    sh(&format!(
        "{b} bud --quiet --isolation chroot --pull-never --build-arg BASE=localhost/busybox \
         -t compare {} >/dev/null",
        ctx.display()
    ));
    let buildah_oci = env.t.path().join("buildah-oci");
    sh(&format!(
        "{b} push --quiet compare oci:{}:latest",
        buildah_oci.display()
    ));
    let trees: Vec<BTreeMap<PathBuf, Node>> = [&hull_oci, &buildah_oci]
        .iter()
        .map(|layout| {
            let bundle = layout.with_extension("bundle");
            sh(&format!(
                "umoci unpack --image {}:latest {} >/dev/null",
                layout.display(),
                bundle.display()
            ));
            walk(&bundle.join("rootfs"))
        })
        .collect();
    let (h, b) = (&trees[0], &trees[1]);
    let mut diffs = Vec::new();
    for (p, n) in h {
        match b.get(p) {
            None => diffs.push(format!("only in hull's: {}", p.display())),
            Some(m) if m != n => diffs.push(format!("{}: hull {n:?} buildah {m:?}", p.display())),
            _ => {}
        }
    }
    // buildah (chroot isolation) leaves the mount points it made for RUN
    // steps in the image, empty; docker's builder does not, nor does hull.
    let buildah_mounts = ["etc/hostname", "etc/hosts", "etc/resolv.conf", "run"];
    for (p, n) in b.iter().filter(|(p, _)| !h.contains_key(*p)) {
        let empty = n.size == 0 && (n.kind == "dir" || n.kind == "file");
        if !(empty && buildah_mounts.iter().any(|m| p == Path::new(m))) {
            diffs.push(format!("only in buildah's: {}", p.display()));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    // The steps the Dockerfile is about, as a user would check them.
    assert!(h.contains_key(Path::new("home/user/fresh/file")));
    // /tmp is the image's own in a RUN step, as in buildah's (no tmpfs).
    assert!(h.contains_key(Path::new("tmp/left-by-run")));
    assert!(!h.contains_key(Path::new("etc/group")));
    let who = h.get(Path::new("srv/app/data/who")).unwrap();
    assert_eq!(
        who.content.as_deref(),
        Some(&b"hello world from 1000\n"[..])
    );
    assert_eq!((who.uid, who.gid), (1000, 1000));
    let listing = h.get(Path::new("srv/app/listing")).unwrap();
    assert_eq!(
        listing.content.as_deref(),
        Some(&b"1.txt\n2.txt\n"[..]),
        ".dockerignore left notes.md out"
    );
    assert!(!h.keys().any(|p| p.starts_with("build")));
    assert_eq!(
        config_fields(&hull_oci, "latest"),
        config_fields(&buildah_oci, "latest")
    );
    Ok(())
}

fn cache() -> Result<(), Failed> {
    let env = Env::new();
    let ctx = env.context("cache");
    let (code, out, err) = env.build(&ctx, &["-t", "cached"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("3 RUN executed"), "{err}");
    let id = out.trim().to_string();
    let t = std::time::Instant::now();
    let (code, out, err) = env.build(&ctx, &["-t", "cached"]);
    let rebuild = t.elapsed();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        id,
        "a fully cached rebuild gives the same image"
    );
    assert_eq!(err.matches("CACHED").count(), 5, "{err}");
    assert!(err.contains("0 RUN executed"), "{err}");
    eprintln!("fully cached rebuild: {} ms", rebuild.as_millis());
    // A changed file: its COPY and what follows rebuild, not what precedes.
    fs::write(ctx.join("files/b"), "B\n").unwrap();
    let (code, _, err) = env.build(&ctx, &["-t", "cached"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("CACHED").count(), 3, "{err}");
    assert!(err.contains("1 RUN executed"), "{err}");
    let (_, out, _) = env.hull(&["run", "--rm", "--isolation", "ns", "cached", "cat", "/both"]);
    assert_eq!(out, "a\nB\n");
    // --no-cache runs everything.
    let (code, _, err) = env.build(&ctx, &["--no-cache", "-t", "cached"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("CACHED").count(), 0, "{err}");
    assert!(err.contains("3 RUN executed"), "{err}");
    Ok(())
}

fn failures() -> Result<(), Failed> {
    let env = Env::new();
    let ctx = env.t.path().join("bad");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN true\nFROBNICATE x\n",
    )
    .unwrap();
    let (code, _, err) = env.build(&ctx, &["-t", "bad"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("Dockerfile:3: unknown instruction FROBNICATE"),
        "{err}"
    );
    assert!(!err.contains("[1/"), "nothing ran: {err}");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo about to fail; exit 3\nRUN echo never\n",
    )
    .unwrap();
    let (code, out, err) = env.build(&ctx, &["-t", "bad"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("about to fail"),
        "the step's output is shown: {out}"
    );
    assert!(
        err.contains("Dockerfile:2: RUN") && err.contains("exited with status 3"),
        "{err}"
    );
    assert!(!out.contains("never"));
    let (_, images, _) = env.hull(&["images", "-q"]);
    assert_eq!(
        images.lines().count(),
        1,
        "only busybox is stored: {images}"
    );
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY missing /x\n").unwrap();
    let (code, _, err) = env.build(&ctx, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Dockerfile:2: missing: no such file or directory in the build context"),
        "{err}"
    );
    Ok(())
}

fn history_save_push() -> Result<(), Failed> {
    require(&["docker-registry"]);
    let env = Env::new();
    let ctx = env.context("cache");
    let (code, _, err) = env.build(&ctx, &["-t", "app:v1"]);
    assert_eq!(code, 0, "{err}");
    let (_, hist, _) = env.hull(&["image", "history", "--no-trunc", "app:v1"]);
    let lines: Vec<&str> = hist.lines().collect();
    assert!(lines[1].contains("RUN cat /a /b > /both"), "{hist}");
    assert!(lines[2].contains("COPY files/b /b"), "{hist}");
    // docker save: skopeo reads it.
    let tar = env.t.path().join("app.tar");
    let (code, _, err) = env.hull(&["save", "-o", &tar.display().to_string(), "app:v1"]);
    assert_eq!(code, 0, "{err}");
    let info = sh(&format!("skopeo inspect docker-archive:{}", tar.display()));
    assert!(info.contains("\"Layers\""), "{info}");

    let reg = registry::start_registry();
    let dest = format!("{}/test/app:v1", reg.addr);
    let (code, _, err) = env.hull(&["tag", "app:v1", &dest]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = env.hull(&["push", &dest]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("pushed"), "{err}");
    let digest = out.trim().to_string();
    let info = sh(&format!(
        "skopeo inspect --tls-verify=false docker://{dest}"
    ));
    assert!(info.contains(&digest), "skopeo sees {digest}: {info}");
    // A second push uploads nothing.
    let (code, _, err) = env.hull(&["push", &dest]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("pushed"), "{err}");
    assert_eq!(err.matches("already in the registry").count(), 7, "{err}");
    // Pulled into an empty data dir, it runs.
    let other = Env {
        t: tempfile::tempdir().unwrap(),
        data: env.t.path().join("data2"),
        state: env.state.clone(),
        _state: env._state.clone(),
        layout: env.layout.clone(),
    };
    let (code, _, err) = other.hull(&["pull", "-q", &dest]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = other.hull(&["run", "--rm", "--isolation", "ns", &dest, "cat", "/both"]);
    assert_eq!((code, out.as_str()), (0, "a\nb\n"), "{err}");
    Ok(())
}

/// A TCP proxy to `target` on a free loopback port that passes everything
/// through, except that it cuts the connection carrying the `nth` PATCH
/// request (counted over all connections) once it forwarded the request's
/// head: a chunk upload that fails before its data arrived. Runs until the
/// test process ends.
fn cutting_proxy(target: String, nth: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let patches = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
            let patches = patches.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    // Request lines start a read in practice (ureq writes
                    // the head in one go): count PATCHes there.
                    if buf[..n].starts_with(b"PATCH ")
                        && patches.fetch_add(1, Ordering::SeqCst) + 1 == nth
                    {
                        let head = buf[..n]
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(n, |i| i + 4);
                        let _ = server.write_all(&buf[..head]);
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// podman with its own root, run root and config (storage on vfs, cgroups
/// through cgroupfs, events in a file), runc, no network of its own.
fn podman(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = podman::with_own_storage(std::process::Command::new("podman"), dir);
    cmd.args(["--runtime", "runc"])
        .args(args)
        .env("TMPDIR", dir);
    let out = cmd
        .output()
        .expect("podman is missing: run scripts/install-deps.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A push in chunks, one of them cut half-way and resumed; the registry
/// then holds the image whole: podman pulls it and runs it.
fn chunked_push_podman_runs() -> Result<(), Failed> {
    require(&["docker-registry", "podman", "runc"]);
    let env = Env::new();
    let ctx = env.context("cache");
    let (code, _, err) = env.build(&ctx, &["-t", "app:v1"]);
    assert_eq!(code, 0, "{err}");
    let reg = registry::start_registry();
    let proxy = cutting_proxy(reg.addr.clone(), 3);
    let dest = format!("{proxy}/test/chunked:v1");
    let (code, _, err) = env.hull(&["tag", "app:v1", &dest]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = env.hull(&["push", "--chunk-size", "65536", &dest]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(" chunks, 1 resumed after a failure)"), "{err}");
    eprintln!("{err}");
    let digest = out.trim().to_string();
    let direct = format!("{}/test/chunked:v1", reg.addr);
    let info = sh(&format!(
        "skopeo inspect --tls-verify=false docker://{direct}"
    ));
    assert!(info.contains(&digest), "skopeo sees {digest}: {info}");
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = podman(dir.path(), &["pull", "-q", "--tls-verify=false", &direct]);
    assert!(ok, "podman pull: {err}");
    let (ok, out, err) = podman(
        dir.path(),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            &direct,
            "cat",
            "/both",
        ],
    );
    assert!(ok, "podman run: {err}");
    assert_eq!(out, "a\nb\n", "podman run's output");
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let skip = std::env::var_os("HULL_SKIP_NS_TESTS").is_some();
    type Test = fn() -> Result<(), Failed>;
    let tests: Vec<(&str, Test)> = vec![
        ("build_ns_equals_buildah", same_as_buildah),
        ("build_cache", cache),
        ("build_failures_exit_1_and_store_nothing", failures),
        ("build_history_save_push", history_save_push),
        ("build_chunked_push_podman_runs", chunked_push_podman_runs),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, f).with_ignored_flag(skip))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
