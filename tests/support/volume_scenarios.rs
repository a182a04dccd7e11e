//! The volume scenarios of the suite (issue 13): `-v`, `--mount`, `--tmpfs`,
//! `--read-only` and `hull volume`, as a user sees them. A child module of
//! scenarios.rs (it uses the suite's Ctx and helpers). Run by run_ns.rs and
//! run_vm.rs (microVMs: virtio-fs shares served by hull-vmm).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libtest_mimic::{Failed, Trial};

use super::{Backend, Ctx, check, mounts, mounts_left, patient, processes_mentioning, run_text};

/// A data dir of its own (named volumes live there) beside the state dir.
fn data_flag(c: &Ctx) -> [String; 2] {
    [
        "--data-dir".into(),
        c.state.path().join("data").display().to_string(),
    ]
}

fn run(c: &Ctx, flags: &[&str], cmd: &[&str]) -> std::process::Command {
    let d = data_flag(c);
    let mut all: Vec<&str> = vec![&d[0], &d[1]];
    all.extend_from_slice(flags);
    c.run(&all, cmd)
}

fn hull(c: &Ctx, args: &[&str]) -> std::process::Command {
    let mut cmd = c.hull(args);
    cmd.args(data_flag(c));
    cmd
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `run -d` with `flags`: the container's id, or what the run said.
fn run_detached(c: &Ctx, flags: &[&str], cmd: &[&str]) -> Result<String, Failed> {
    let mut all = vec!["-d"];
    all.extend_from_slice(flags);
    let o = run_text(run(c, &all, cmd))?;
    check(o.code == Some(0), || format!("run -d failed; {o}"))?;
    Ok(o.stdout.trim().to_string())
}

/// Polls `done` every 100 ms for up to `secs` seconds on a quiet machine
/// (scaled by its load, see `hull_proc::patience`); its last answer.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + patient(std::time::Duration::from_secs(secs));
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

/// Host file in, container file out (owned, as the host sees it, by the
/// owner of the directory's mapping: root, through the id-mapped bind), and
/// a file the host writes while the container runs reaches it, also when
/// the container has read it before.
fn bind_mount_both_ways(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("in.txt"), "from the host\n")?;
    let spec = format!("{}:/data", p(host.path()));
    let o = run_text(run(
        &c,
        &["--rm", "-v", &spec],
        &[
            "sh",
            "-c",
            "cat /data/in.txt; echo from the container > /data/out.txt",
        ],
    ))?;
    check(o.code == Some(0) && o.stdout == "from the host\n", || {
        format!("the container must read the host's file; {o}")
    })?;
    let out = host.path().join("out.txt");
    check(
        std::fs::read_to_string(&out).ok().as_deref() == Some("from the container\n"),
        || "the host must read the container's file".into(),
    )?;
    let md = std::fs::metadata(&out)?;
    check(md.uid() == 0 && md.gid() == 0, || {
        format!(
            "root in the container writes root-owned files (id-mapped bind); got {}:{}",
            md.uid(),
            md.gid()
        )
    })?;
    // A file past 64 MiB (the jailed hull-vmm's file-size limit for its
    // console must not cut the guest's files in a share).
    let o = run_text(run(
        &c,
        &["--rm", "-v", &spec],
        &["dd", "if=/dev/zero", "of=/data/big", "bs=1M", "count=65"],
    ))?;
    let big = std::fs::metadata(host.path().join("big")).map(|m| m.len());
    check(
        o.code == Some(0) && big.as_ref().ok() == Some(&(65 << 20)),
        || format!("a 65 MiB file written into the volume; host size {big:?}; {o}"),
    )?;
    std::fs::remove_file(host.path().join("big"))?;
    // A container user writes files the host sees as that user (vm: also
    // when hull-vmm is jailed as a pool uid).
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o777))?;
    let o = run_text(run(
        &c,
        &["--rm", "-u", "1000:1000", "-v", &spec],
        &["sh", "-c", "echo by user > /data/user.txt"],
    ))?;
    check(o.code == Some(0), || {
        format!("user 1000 writing the volume; {o}")
    })?;
    let md = std::fs::metadata(host.path().join("user.txt"))?;
    check(md.uid() == 1000 && md.gid() == 1000, || {
        format!(
            "container user 1000 writes files the host sees as 1000:1000; got {}:{}",
            md.uid(),
            md.gid()
        )
    })?;
    // While it runs: the container waits for the host's file, answers.
    let id = run_detached(
        &c,
        &["-v", &spec],
        &[
            "sh",
            "-c",
            "i=0; while [ ! -f /data/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             cat /data/go > /data/done; \
             i=0; while [ \"$(cat /data/go)\" != LIVE ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             cat /data/go > /data/again; sleep 1000",
        ],
    )?;
    std::fs::write(host.path().join("go"), "live\n")?;
    let done = host.path().join("done");
    wait_until(60, || {
        std::fs::read_to_string(&done).ok().as_deref() == Some("live\n")
    });
    let got = std::fs::read_to_string(&done).unwrap_or_default();
    // The container has read (vm: and cached) the file; the host rewrites
    // it in place, same size: the change must reach the container too
    // (vm: within the 1 s a guest trusts its cached attributes).
    let again = host.path().join("again");
    if got == "live\n" {
        std::fs::write(host.path().join("go"), "LIVE\n")?;
        wait_until(60, || {
            std::fs::read_to_string(&again).ok().as_deref() == Some("LIVE\n")
        });
    }
    let got_again = std::fs::read_to_string(&again).unwrap_or_default();
    let rm = run_text(c.hull(&["rm", "-f", &id]))?;
    check(got == "live\n", || {
        format!("a file the host writes must reach the running container; got {got:?}")
    })?;
    check(got_again == "LIVE\n", || {
        format!(
            "a file the container has read, rewritten by the host, must reach it changed; got {got_again:?}"
        )
    })?;
    check(rm.code == Some(0), || format!("{rm}"))
}

/// The share's cache settings (docs/volumes.md, "Caching"). By default a
/// file written through a write-only open (which goes straight to the
/// host) and read back in the same container reads the new bytes, also
/// where the container had cached the old ones; so does `:cached` (all
/// through the guest's page cache). With `:consistent` every
/// read goes to the host: a host rewrite the container has no way to
/// notice by size or mtime (same length, mtime put back) is read at once.
fn cache_settings_keep_reads_coherent(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let host = tempfile::tempdir()?;
    for mode in ["", ":cached"] {
        let spec = format!("{}:/data{mode}", p(host.path()));
        let o = run_text(run(
            &c,
            &["--rm", "-v", &spec],
            &[
                "sh",
                "-c",
                "echo one > /data/g; cat /data/g; \
                 printf two | dd of=/data/g conv=notrunc 2>/dev/null; cat /data/g",
            ],
        ))?;
        check(o.code == Some(0) && o.stdout == "one\ntwo\n", || {
            format!(
                "-v DIR:/data{mode}: an in-place write-only rewrite must be read back at once; {o}"
            )
        })?;
    }
    let f = host.path().join("f");
    std::fs::write(&f, "old\n")?;
    let spec = format!("{}:/data:consistent", p(host.path()));
    let cmd = run(
        &c,
        &["--rm", "-v", &spec],
        &[
            "sh",
            "-c",
            "cat /data/f; : > /data/ready; \
             i=0; while [ ! -f /data/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             cat /data/f",
        ],
    );
    let container = std::thread::spawn(move || run_text(cmd));
    let ready = wait_until(120, || host.path().join("ready").exists());
    if ready {
        let mtime = std::fs::metadata(&f)?.modified()?;
        std::fs::write(&f, "new\n")?;
        std::fs::File::options()
            .write(true)
            .open(&f)?
            .set_modified(mtime)?;
        std::fs::write(host.path().join("go"), "")?;
    }
    let o = container
        .join()
        .map_err(|_| Failed::from("the container's thread panicked"))??;
    check(ready, || {
        format!("the container never got to its first read; {o}")
    })?;
    check(o.code == Some(0) && o.stdout == "old\nnew\n", || {
        format!(
            "with :consistent, a host rewrite that keeps size and mtime must be read at once; {o}"
        )
    })
}

/// `:ro` and `--mount ...,readonly`: writes fail with EROFS, the host's
/// files stay as they were.
fn read_only_mounts_refuse_writes(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("f"), "orig\n")?;
    let v = format!("{}:/data:ro", p(host.path()));
    let m = format!("type=bind,src={},dst=/data,readonly", p(host.path()));
    for flags in [["-v", v.as_str()], ["--mount", m.as_str()]] {
        let mut all = vec!["--rm"];
        all.extend(flags);
        let o = run_text(run(
            &c,
            &all,
            &[
                "sh",
                "-c",
                "cat /data/f; echo changed > /data/f; echo new > /data/g",
            ],
        ))?;
        check(o.stdout == "orig\n" && o.code != Some(0), || {
            format!("{flags:?}: reads work, writes fail; {o}")
        })?;
        check(o.stderr.contains("Read-only file system"), || {
            format!("{flags:?}: writes must fail with EROFS; {o}")
        })?;
        check(
            std::fs::read_to_string(host.path().join("f"))? == "orig\n"
                && !host.path().join("g").exists(),
            || format!("{flags:?}: the host's files must be untouched"),
        )?;
    }
    Ok(())
}

/// A named volume keeps its data across containers and their `rm`; it is
/// seeded from the image when empty; `volume rm` refuses it while a
/// container refers to it, and takes it after.
fn named_volume_lifecycle(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    // /etc in the busybox image holds passwd and group: the empty volume gets them.
    let o = run_text(run(
        &c,
        &["--name", "writer", "-v", "vol:/etc"],
        &[
            "sh",
            "-c",
            "cat /etc/group >/dev/null && echo kept > /etc/note",
        ],
    ))?;
    check(o.code == Some(0), || {
        format!("the seeded volume must hold the image's /etc/group; {o}")
    })?;
    let ls = run_text(hull(&c, &["volume", "ls", "--json"]))?;
    check(ls.stdout.contains("\"name\": \"vol\""), || {
        format!("volume ls --json must list vol; {ls}")
    })?;
    let rm = run_text(hull(&c, &["volume", "rm", "vol"]))?;
    check(
        rm.code == Some(1) && rm.stderr.contains("in use") && rm.stderr.contains("writer"),
        || format!("volume rm must refuse a volume a container refers to; {rm}"),
    )?;
    let rmc = run_text(c.hull(&["rm", "writer"]))?;
    check(rmc.code == Some(0), || format!("{rmc}"))?;
    let o = run_text(run(&c, &["--rm", "-v", "vol:/etc"], &["cat", "/etc/note"]))?;
    check(o.code == Some(0) && o.stdout == "kept\n", || {
        format!("a second container must see the first one's file after its rm; {o}")
    })?;
    let inspect = run_text(hull(&c, &["volume", "inspect", "vol"]))?;
    check(inspect.stdout.contains("volumes/vol/_data"), || {
        format!("{inspect}")
    })?;
    let rm = run_text(hull(&c, &["volume", "rm", "vol"]))?;
    check(rm.code == Some(0), || {
        format!("volume rm after the containers are gone; {rm}")
    })?;
    // An anonymous volume goes with its --rm container, as docker's does.
    let o = run_text(run(&c, &["--rm", "-v", "/anon"], &["touch", "/anon/x"]))?;
    check(o.code == Some(0), || format!("{o}"))?;
    let ls = run_text(hull(&c, &["volume", "ls", "-q"]))?;
    check(ls.stdout.is_empty(), || {
        format!("no volume may be left (vol removed, the anonymous one with its container); {ls}")
    })
}

/// `--tmpfs PATH:size=1m` is a tmpfs of 1 MiB (a 2 MiB write fails);
/// `--read-only` refuses writes outside volumes and tmpfs mounts.
fn tmpfs_and_read_only_root(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let o = run_text(run(
        &c,
        &["--rm", "--tmpfs", "/scratch:size=1m"],
        &[
            "sh",
            "-c",
            "grep ' /scratch ' /proc/mounts; df -k /scratch | tail -n1; dd if=/dev/zero of=/scratch/big bs=1024 count=2048",
        ],
    ))?;
    check(
        o.stdout.contains("tmpfs") && o.stdout.contains(" 1024 "),
        || format!("/scratch must be a 1024 KiB tmpfs; {o}"),
    )?;
    check(
        o.code != Some(0) && o.stderr.contains("No space left"),
        || format!("2 MiB must not fit in 1 MiB; {o}"),
    )?;
    let o = run_text(run(
        &c,
        &[
            "--rm",
            "--read-only",
            "--tmpfs",
            "/scratch",
            "-v",
            "rw:/vol",
        ],
        &[
            "sh",
            "-c",
            "echo a > /scratch/a && echo a > /vol/a && echo a > /tmp/a && echo writable; \
             grep -q localhost /etc/hosts && echo hosts; echo x > /etc/x",
        ],
    ))?;
    check(o.stdout == "writable\nhosts\n", || {
        format!("tmpfs, volume and /tmp stay writable, /etc/hosts is hull's; {o}")
    })?;
    check(
        o.code != Some(0) && o.stderr.contains("Read-only file system"),
        || format!("the root must refuse writes; {o}"),
    )
}

/// From inside: `..`, a symlink to /etc/shadow and to the host file's path,
/// a symlink swapped during a loop of opens, a hard link to a file outside
/// the volume: none reads or changes the host's file beside the volume.
fn escape_attempts(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let outer = tempfile::tempdir()?;
    let secret = outer.path().join("secret");
    std::fs::write(&secret, "HOST-SECRET\n")?;
    let vol = outer.path().join("vol");
    std::fs::create_dir(&vol)?;
    let spec = format!("{}:/data", p(&vol));
    let host_secret = p(&secret);
    let script = format!(
        "cat /data/../secret; echo x > /data/../secret; \
         ln -s /etc/shadow /data/shadow; cat /data/shadow; \
         ln -s {host_secret} /data/abs; cat /data/abs; echo x > /data/abs; \
         ln -s ../secret /data/rel; cat /data/rel; \
         ln {host_secret} /data/hard; ln /data/../secret /data/hard2; \
         (i=0; while [ $i -lt 200 ]; do ln -sfn /etc/passwd /data/race; ln -sfn {host_secret} /data/race; i=$((i+1)); done) & \
         i=0; while [ $i -lt 200 ]; do cat /data/race 2>/dev/null; i=$((i+1)); done; wait; echo finished"
    );
    let o = run_text(run(&c, &["--rm", "-v", &spec], &["sh", "-c", &script]))?;
    check(o.stdout.contains("finished"), || {
        format!("the attempts must run to the end; {o}")
    })?;
    check(!o.stdout.contains("HOST-SECRET"), || {
        format!("the host file beside the volume was read from inside; {o}")
    })?;
    check(std::fs::read_to_string(&secret)? == "HOST-SECRET\n", || {
        "the host file beside the volume was changed from inside".into()
    })?;
    for hard in ["hard", "hard2"] {
        let md = std::fs::symlink_metadata(vol.join(hard));
        check(
            md.as_ref().map_or(true, |m| {
                m.ino() != std::fs::metadata(&secret).map(|s| s.ino()).unwrap_or(0)
            }),
            || format!("{hard}: a hard link to the host file was made inside the volume"),
        )?;
    }
    Ok(())
}

/// docker's usage errors: exit 125, one line, nothing created.
fn bad_mount_flags_are_125(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let missing = c.state.path().join("missing");
    let bind_missing = format!("type=bind,src={},dst=/x", p(&missing));
    let cases: [(&[&str], &str); 5] = [
        (&["-v", "./rel:/x"], "absolute path"),
        (&["-v", "/tmp:x"], "must be absolute"),
        (&["--mount", &bind_missing], "does not exist"),
        (&["--mount", "type=nfs,dst=/x"], "invalid mount type"),
        (&["--tmpfs", "/t:size=lots"], "invalid size"),
    ];
    for (flags, want) in cases {
        let mut all = vec!["--rm"];
        all.extend_from_slice(flags);
        let o = run_text(run(&c, &all, &["true"]))?;
        check(
            o.code == Some(125) && o.stderr.contains(want) && o.stderr.trim().lines().count() == 1,
            || format!("{flags:?}: want exit 125 and one line with {want:?}; {o}"),
        )?;
    }
    check(!missing.exists() && c.containers().is_empty(), || {
        "a refused run must create nothing".into()
    })
}

/// `rm -f` of a running container with a bind, a volume and a tmpfs leaves
/// no process, no mount on the host and the volume's data in place.
fn rm_force_with_volumes_leaves_nothing(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let host = tempfile::tempdir()?;
    let spec = format!("{}:/data", p(host.path()));
    let before = mounts();
    let id = run_detached(
        &c,
        &["-v", &spec, "-v", "keep:/keep", "--tmpfs", "/t"],
        &["sh", "-c", "echo x > /keep/x; exec sleep 1000"],
    )?;
    // `run -d` returns once sh has started: wait for its write to the
    // volume, so rm -f meets a container that has used its mounts.
    let data = c.state.path().join("data/volumes/keep/_data/x");
    check(wait_until(60, || data.exists()), || {
        "the container's write to its volume never showed on the host".into()
    })?;
    let rm = run_text(c.hull(&["rm", "-f", &id]))?;
    check(rm.code == Some(0), || format!("{rm}"))?;
    let left = processes_mentioning(&id);
    check(left.is_empty(), || format!("processes left: {left:?}"))?;
    let new = mounts_left(&before, &[c.state.path(), host.path()]);
    check(new.is_empty(), || format!("mounts left: {new:?}"))?;
    check(data.exists(), || {
        "the volume's data must outlive rm -f".into()
    })
}

/// Processes holding an fd on `dir` or a file under it, found by device
/// and inode (a jailed hull-vmm sees the share at another path).
fn fds_under(dir: &Path) -> Vec<String> {
    let mut inodes = std::collections::BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(md) = std::fs::symlink_metadata(&d) {
            inodes.insert((md.dev(), md.ino()));
            if md.is_dir() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    todo.push(e.path());
                }
            }
        }
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        for fd in std::fs::read_dir(e.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(md) = std::fs::metadata(fd.path()) {
                if inodes.contains(&(md.dev(), md.ino())) {
                    let target = std::fs::read_link(fd.path()).unwrap_or_default();
                    found.push(format!("{pid}: {}", target.display()));
                }
            }
        }
    }
    found
}

/// `kill -9` of a microVM's hull-vmm while the guest holds files of its
/// share open: the container is recorded as ended, and no process, mount
/// or open fd on the share is left on the host.
fn vmm_kill_9_leaves_nothing(b: Backend) -> Result<(), Failed> {
    let c = Ctx::new(b);
    let host = tempfile::tempdir()?;
    let spec = format!("{}:/data", p(host.path()));
    let before = mounts();
    let id = run_detached(
        &c,
        &["-v", &spec],
        &[
            "sh",
            "-c",
            "mkdir -p /data/d && exec 3>/data/d/open && echo ready > /data/ready && exec sleep 1000",
        ],
    )?;
    let ready = host.path().join("ready");
    wait_until(120, || ready.exists());
    check(ready.exists(), || {
        "the container never wrote its share".into()
    })?;
    let held = fds_under(host.path());
    check(!held.is_empty(), || {
        "while the guest runs, hull-vmm holds the share's files (none seen)".into()
    })?;
    let vmms: Vec<i32> = processes_mentioning(&id)
        .iter()
        .filter(|l| l.contains("hull-vmm"))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect();
    check(!vmms.is_empty(), || format!("no hull-vmm of {id} found"))?;
    for pid in &vmms {
        // SAFETY: kill with integer arguments, on the VMM this test started.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + patient(std::time::Duration::from_secs(60));
    loop {
        let ps = run_text(c.hull(&["ps", "-a"]))?;
        if !ps.stdout.contains("Up ") || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let rm = run_text(c.hull(&["rm", "-f", &id]))?;
    check(rm.code == Some(0), || format!("{rm}"))?;
    let left = processes_mentioning(&id);
    check(left.is_empty(), || format!("processes left: {left:?}"))?;
    let fds = fds_under(host.path());
    check(fds.is_empty(), || format!("fds on the share left: {fds:?}"))?;
    let new = mounts_left(&before, &[c.state.path(), host.path()]);
    check(new.is_empty(), || format!("mounts left: {new:?}"))?;
    check(host.path().join("d/open").exists(), || {
        "the share's files stay".into()
    })
}

/// The library's `RootFs::HostDir` (what the OCI runtime uses for a
/// bundle's root.path): the microVM's root is a host directory over
/// virtio-fs. The container reads the directory's files and its writes land
/// in it, owned by root as the host sees them; with `read_only` the share
/// refuses writes.
fn host_dir_root(b: Backend) -> Result<(), Failed> {
    use hull::sandbox::RootFs;
    use hull::{Container, ContainerConfig, Isolation};
    use hull_agent::protocol::Start;
    let c = Ctx::new(b);
    let root = c.state.path().join("bundle-root");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(super::rootfs())
        .arg(&root)
        .status()?;
    check(cp.success(), || "copying the busybox rootfs".into())?;
    std::fs::write(root.join("marker"), "from the host dir\n")?;
    for (name, read_only) in [("hostroot", false), ("hostroot-ro", true)] {
        let config = ContainerConfig {
            name: Some(name.into()),
            read_only,
            rootfs: RootFs::HostDir(root.clone()),
            ..ContainerConfig::new("bundle", vec!["sh".into()], Isolation::Vm)
        };
        let mut ctr = Container::create(&c.state.path().join("lib"), &config)?;
        ctr.start()?;
        let start = Start::main(
            vec![
                "sh".into(),
                "-c".into(),
                "cat /marker; echo written > /written-by-guest".into(),
            ],
            vec!["PATH=/bin".into()],
        );
        let attached = super::captured::attach(&mut ctr, &start)?;
        let status = attached.outcome.status();
        ctr.finish(status, None)?;
        ctr.delete(false)?;
        let (stdout, stderr) = (attached.stdout, attached.stderr);
        check(stdout == "from the host dir\n", || {
            format!("{name}: the root must be the host dir; stdout {stdout:?} stderr {stderr:?}")
        })?;
        let written = root.join("written-by-guest");
        if read_only {
            check(
                status != 0 && stderr.contains("Read-only file system") && !written.exists(),
                || format!("{name}: a read-only root refuses writes; status {status}, {stderr:?}"),
            )?;
        } else {
            check(status == 0, || {
                format!("{name}: status {status}, {stderr:?}")
            })?;
            let md = std::fs::metadata(&written)?;
            check(
                std::fs::read_to_string(&written)? == "written\n" && md.uid() == 0,
                || format!("{name}: the guest's file lands in the host dir, owned by root"),
            )?;
            std::fs::remove_file(&written)?;
        }
    }
    Ok(())
}

type Scenario = fn(Backend) -> Result<(), Failed>;

/// The volume scenarios for backend `b`.
pub fn volume_trials(b: Backend) -> Vec<Trial> {
    let mut all: Vec<(&str, Scenario)> = vec![
        ("bind_mount_both_ways", bind_mount_both_ways),
        (
            "cache_settings_keep_reads_coherent",
            cache_settings_keep_reads_coherent,
        ),
        (
            "read_only_mounts_refuse_writes",
            read_only_mounts_refuse_writes,
        ),
        ("named_volume_lifecycle", named_volume_lifecycle),
        ("tmpfs_and_read_only_root", tmpfs_and_read_only_root),
        ("volume_escape_attempts", escape_attempts),
        ("bad_mount_flags_are_125", bad_mount_flags_are_125),
        (
            "rm_force_with_volumes_leaves_nothing",
            rm_force_with_volumes_leaves_nothing,
        ),
    ];
    if b.0 == "vm" {
        all.push(("vmm_kill_9_leaves_nothing", vmm_kill_9_leaves_nothing));
        all.push(("host_dir_root", host_dir_root));
    }
    all.into_iter()
        .map(|(name, f)| Trial::test(format!("{}::volumes::{name}", b.0), move || f(b)))
        .collect()
}
