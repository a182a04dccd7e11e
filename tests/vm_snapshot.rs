//! hull-vmm snapshots end to end, through real KVM (directly on hardware
//! KVM, inside tests/kvm-host elsewhere; see tests/support/vmtest.rs): a
//! guest with two vCPUs and an entropy device is snapshotted at the
//! agent's ready line (the busybox init prints it in the agent's place) and restored twice; each clone carries on from the
//! mark and its devices work. Snapshots of another memory size, kernel,
//! truncated or corrupted, are refused with one line and exit 4. Then
//! `hull run` from templates (tests/support/restore_trials.rs) and a few
//! scenarios with `--cold-boot`.

#[path = "support/restore_trials.rs"]
mod restore_trials;
#[path = "support/scenarios.rs"]
mod scenarios;
#[path = "support/vmtest.rs"]
mod vmtest;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vmtest::{Failed, Trial, check, text};

const BEFORE: &str = "BEFORE-SNAPSHOT";
const AFTER: &str = "AFTER-RESTORE";

/// The guest's init, in the agent's place: says it is ready (the snapshot
/// point), then, restored, reads /dev/hwrng as a container would after the
/// agent's post-restore reseed. Two steps keep the template's bytes out:
/// `stty` sets the console with TCSADRAIN, which waits until the ready
/// line's last byte has left the UART, i.e. until hull-vmm has paused the
/// VM there (the console's output is interrupt-driven, so without it the
/// shell ran on past the line and once read its 256 bytes before the
/// snapshot, the same in every clone); and the 64 bytes the virtio-rng
/// driver buffered before the snapshot are dropped, as the agent drops
/// them when it freshens a restored guest.
fn initramfs(dir: &Path) -> PathBuf {
    let init = format!(
        "mount -t proc proc /proc\n\
         mount -t devtmpfs dev /dev\n\
         echo {BEFORE} cpus=$(nproc)\n\
         echo hull-agent: ready\n\
         stty -F /dev/console onlcr\n\
         head -c 64 /dev/hwrng >/dev/null\n\
         echo \"{AFTER} cpus=$(nproc) rng=$(head -c 256 /dev/hwrng | od -An -tx1 | tr -d ' \\n')\"\n\
         reboot -f"
    );
    vmtest::busybox_initramfs(dir, &init)
}

fn vmm(args: &[&std::ffi::OsStr]) -> Result<(Option<i32>, String, String), Failed> {
    let out = Command::new(vmtest::hull_vmm()).args(args).output()?;
    Ok(text(&out))
}

fn restore(snap: &Path, extra: &[&str]) -> Result<(Option<i32>, String, String), Failed> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["--restore".as_ref(), snap.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    vmm(&args)
}

/// Makes the template; returns its directory.
fn template(dir: &Path) -> Result<PathBuf, Failed> {
    let initrd = initramfs(dir);
    let snap = dir.join("snap");
    let kernel = vmtest::kernel();
    let t = Instant::now();
    let (code, out, err) = vmm(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--vcpus".as_ref(),
        "2".as_ref(),
        "--rng".as_ref(),
        "--snapshot-at-ready".as_ref(),
        snap.as_os_str(),
    ])?;
    eprintln!("template: boot and snapshot in {:?}", t.elapsed());
    check(code == Some(0), || format!("exit {code:?}, stderr: {err}"))?;
    check(out.contains(&format!("{BEFORE} cpus=2")), || {
        format!("the guest did not reach the snapshot point with 2 CPUs:\n{out}")
    })?;
    check(!out.contains(AFTER), || {
        format!("the template ran past its snapshot point:\n{out}")
    })?;
    check(err.contains("snapshot written to"), || {
        format!("stderr: {err}")
    })?;
    Ok(snap)
}

fn snapshot_restores_twice_and_each_clone_carries_on() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let snap = template(dir.path())?;
    let mut rngs = Vec::new();
    for i in 0..2 {
        let t = Instant::now();
        let (code, out, err) = restore(&snap, &["--rng"])?;
        eprintln!("restore {i}: to the guest's reboot in {:?}", t.elapsed());
        check(code == Some(0), || {
            format!("restore {i}: exit {code:?}, stderr: {err}")
        })?;
        let line = out
            .lines()
            .find(|l| l.starts_with(AFTER))
            .ok_or_else(|| format!("restore {i} did not carry on after the mark:\n{out}"))?;
        check(line.contains("cpus=2"), || format!("restore {i}: {line}"))?;
        let rng = line.split("rng=").nth(1).unwrap_or("").to_string();
        check(rng.len() == 512, || {
            format!("restore {i}: no 256 bytes from the restored virtio-rng: {line}")
        })?;
        check(!out.contains(BEFORE), || {
            format!("restore {i} booted again instead of restoring:\n{out}")
        })?;
        eprintln!("restore {i}: 256 bytes of /dev/hwrng: {rng}");
        rngs.push(rng);
    }
    // Every byte comes fresh from each clone's device: no 8 bytes of one
    // clone's read are anywhere in the other's.
    let shared: Vec<&str> = (0..rngs[0].len() / 16)
        .map(|k| &rngs[0][k * 16..k * 16 + 16])
        .filter(|chunk| rngs[1].contains(chunk))
        .collect();
    check(shared.is_empty(), || {
        format!("two clones read the same bytes from /dev/hwrng ({shared:?}): {rngs:?}")
    })
}

/// Runs a restore that must be refused: exit 4, one line containing `want`.
fn refused(snap: &Path, extra: &[&str], want: &str) -> Result<(), Failed> {
    let (code, out, err) = restore(snap, extra)?;
    check(code == Some(4), || {
        format!("{extra:?}: exit {code:?}, stderr: {err}")
    })?;
    check(err.lines().count() == 1, || format!("not one line: {err}"))?;
    check(err.contains(want), || {
        format!("{extra:?}: {err:?} lacks {want:?}")
    })?;
    check(out.is_empty(), || {
        format!("the refused snapshot ran:\n{out}")
    })
}

fn copy_snapshot(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in ["state", "memory"] {
        std::fs::copy(from.join(f), to.join(f))?;
    }
    Ok(())
}

fn other_truncated_or_corrupted_snapshots_are_refused() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let snap = template(dir.path())?;
    refused(
        &snap,
        &["--mem", "256", "--rng"],
        "with 128 MiB of memory, not 256",
    )?;
    refused(&snap, &["--vcpus", "1", "--rng"], "with 2 vCPUs, not 1")?;
    let other_kernel = dir.path().join("vmlinux");
    std::fs::write(&other_kernel, b"not the kernel")?;
    let k = other_kernel.to_string_lossy().into_owned();
    refused(&snap, &["--kernel", &k, "--rng"], "from another kernel")?;

    let bad = dir.path().join("truncated");
    copy_snapshot(&snap, &bad)?;
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(bad.join("memory"))?;
    mem.set_len(mem.metadata()?.len() - 4096)?;
    refused(&bad, &["--rng"], "truncated")?;

    let bad = dir.path().join("flipped");
    copy_snapshot(&snap, &bad)?;
    let mut state = std::fs::read(bad.join("state"))?;
    let i = state.len() / 2;
    state[i] ^= 0x01;
    std::fs::write(bad.join("state"), state)?;
    refused(&bad, &["--rng"], "corrupted")
}

fn a_guest_that_never_gets_ready_leaves_no_snapshot() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let initrd = vmtest::busybox_initramfs(dir.path(), "echo not ready; reboot -f");
    let snap = dir.path().join("snap");
    let kernel = vmtest::kernel();
    let (code, _, err) = vmm(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--snapshot-at-ready".as_ref(),
        snap.as_os_str(),
    ])?;
    check(code == Some(1), || format!("exit {code:?}: {err}"))?;
    check(err.contains("ended before its agent was ready"), || {
        format!("stderr: {err}")
    })?;
    check(!snap.join("state").exists(), || {
        "a state file was written".into()
    })
}

/// Proportional set size of process `pid`, in KiB.
fn pss_kib(pid: u32) -> Result<u64, Failed> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no Pss in /proc/{pid}/smaps_rollup").into())
}

/// An idle guest: started, waited for until its console says IDLE.
struct Idle {
    child: std::process::Child,
    ready_after: std::time::Duration,
}

impl Idle {
    fn start(args: &[&std::ffi::OsStr]) -> Result<Idle, Failed> {
        use std::io::{BufRead, BufReader};
        let t = Instant::now();
        let mut child = Command::new(vmtest::hull_vmm())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("IDLE") => break,
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    return Err("the guest ended before it was idle".into());
                }
            }
        }
        let ready_after = t.elapsed();
        // Keep the console drained so the guest never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Ok(Idle { child, ready_after })
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn restored_clones_share_the_template_memory() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let init = "mount -t proc proc /proc\n\
                echo hull-agent: ready\n\
                echo IDLE\n\
                exec sleep 100000";
    let initrd = vmtest::busybox_initramfs(dir.path(), init);
    let kernel = vmtest::kernel();
    let snap = dir.path().join("snap");
    let (code, _, err) = vmm(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--snapshot-at-ready".as_ref(),
        snap.as_os_str(),
    ])?;
    check(code == Some(0), || {
        format!("template: exit {code:?}: {err}")
    })?;
    let cold = Idle::start(&[
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--initrd".as_ref(),
        initrd.as_os_str(),
        "--cmdline".as_ref(),
        "quiet".as_ref(),
    ])?;
    let cold_pss = pss_kib(cold.child.id())?;
    let cold_ready = cold.ready_after;
    drop(cold);
    let clones = (0..3)
        .map(|_| Idle::start(&["--restore".as_ref(), snap.as_os_str()]))
        .collect::<Result<Vec<_>, _>>()?;
    let pss: Vec<u64> = clones
        .iter()
        .map(|c| pss_kib(c.child.id()))
        .collect::<Result<_, _>>()?;
    let mean = pss.iter().sum::<u64>() / pss.len() as u64;
    let ready: Vec<_> = clones.iter().map(|c| c.ready_after).collect();
    eprintln!(
        "idle PSS: cold boot {cold_pss} KiB, restored clones {pss:?} KiB (mean {mean}); \
         to IDLE: cold {cold_ready:?}, restored {ready:?}"
    );
    check(mean < cold_pss, || {
        format!("restored clones use {mean} KiB PSS each, a cold boot {cold_pss} KiB")
    })
}

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if std::env::var_os("HULL_IN_KVM_HOST").is_none() && !listing && !skipping {
        // hull and the agent, built here, where cargo is.
        scenarios::build_runtime();
    }
    let mut trials = vec![
        Trial::test(
            "snapshot_restores_twice_and_each_clone_carries_on",
            snapshot_restores_twice_and_each_clone_carries_on,
        ),
        Trial::test(
            "restored_clones_share_the_template_memory",
            restored_clones_share_the_template_memory,
        ),
        Trial::test(
            "a_guest_that_never_gets_ready_leaves_no_snapshot",
            a_guest_that_never_gets_ready_leaves_no_snapshot,
        ),
        Trial::test(
            "other_truncated_or_corrupted_snapshots_are_refused",
            other_truncated_or_corrupted_snapshots_are_refused,
        ),
    ];
    trials.extend(restore_trials::trials());
    // run_vm runs the whole scenario suite restored (the default); a few
    // scenarios cold-booted keep --cold-boot honest.
    trials.extend(scenarios::some_trials(
        scenarios::Backend("vm-cold"),
        &[
            "output_and_exit_code",
            "env_cwd_user_hostname_groups",
            "sigterm_exits_143",
            "detach_exec_logs_stop",
        ],
    ));
    vmtest::run_vm_tests(trials);
}
