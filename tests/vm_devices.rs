//! hull-vmm's virtio devices end to end, through real KVM (directly on hardware
//! KVM, inside tests/kvm-host elsewhere; see tests/support/vmtest.rs): block
//! disks read-only and read-write, 16 of them, the entropy device, and vsock
//! both ways with 64 MiB streams and many connections.

#[path = "support/vmtest.rs"]
mod vmtest;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmtest::{Failed, SerialVm, Trial, check, expect_field, field, sha256_hex};

/// The guest side of the vsock tests, built from tests/support/vsock_probe.c.
fn probe() -> PathBuf {
    vmtest::bin_dir().join("vsock_probe")
}

fn build_probe() {
    let src = vmtest::repo().join("tests/support/vsock_probe.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(probe())
        .arg(src)
        .status()
        .expect("gcc (and Debian's libc6-dev) is needed to build the vsock probe");
    assert!(
        status.success(),
        "building tests/support/vsock_probe.c failed"
    );
}

/// A running hull-vmm with the busybox initramfs (with the vsock probe) and `init`.
fn start_vm(dir: &Path, init: &str, extra: &[&str]) -> SerialVm {
    let probe = probe();
    let initrd = vmtest::busybox_initramfs_with(dir, init, &[(probe.as_path(), "vsock_probe")]);
    let mut cmd = Command::new(vmtest::hull_vmm());
    cmd.arg("--kernel")
        .arg(vmtest::kernel())
        .arg("--initrd")
        .arg(initrd)
        .args(["--mem", "256"])
        .args(extra);
    SerialVm::spawn(cmd)
}

fn disks_rng_and_sixteen_devices() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let ro = dir.path().join("ro.img");
    let mut data = vec![0u8; 8 << 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    std::fs::write(&ro, &data)?;
    let rw = dir.path().join("rw.img");
    std::fs::write(&rw, vec![0u8; 1 << 20])?;
    let mut args = vec![
        "--disk".to_string(),
        format!("{},ro,id=hull-data", ro.display()),
        "--disk".to_string(),
        format!("{},id=scratch", rw.display()),
        "--rng".to_string(),
    ];
    for i in 0..14 {
        let p = dir.path().join(format!("extra{i}.img"));
        std::fs::write(&p, vec![i as u8; 64 << 10])?;
        args.extend(["--disk".to_string(), format!("{},ro", p.display())]);
    }
    let init = "mount -t sysfs sys /sys\n\
        mount -t devtmpfs dev /dev\n\
        echo \"ro-sha=$(sha256sum /dev/vda | cut -d' ' -f1)\"\n\
        echo \"serial=$(cat /sys/block/vda/serial)\"\n\
        dd if=/dev/zero of=/dev/vda bs=4096 count=1 2>/dev/null; echo \"ro-write-rc=$?\"\n\
        printf HULL-RW-DATA | dd of=/dev/vdb bs=1 seek=4096 conv=notrunc 2>/dev/null\n\
        sync; echo \"rw-write-rc=$?\"\n\
        echo \"disks=$(ls /sys/block | grep -c '^vd')\"\n\
        echo \"rng=$(head -c 4096 /dev/hwrng | wc -c)\"\n\
        echo \"rng-current=$(cat /sys/class/misc/hw_random/rng_current)\"\n\
        echo alive=yes\n\
        reboot -f";
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = start_vm(dir.path(), init, &argv).finish(Duration::from_secs(300));
    check(code == Some(0), || {
        format!("hull-vmm exit {code:?}; serial:\n{out}")
    })?;
    expect_field(&out, "ro-sha", &sha256_hex(&ro))?;
    expect_field(&out, "serial", "hull-data")?;
    check(
        field(&out, "ro-write-rc").is_some_and(|rc| rc != "0"),
        || format!("a write to the read-only disk did not fail; serial:\n{out}"),
    )?;
    expect_field(&out, "rw-write-rc", "0")?;
    expect_field(&out, "disks", "16")?;
    expect_field(&out, "rng", "4096")?;
    check(
        field(&out, "rng-current").is_some_and(|r| r.starts_with("virtio_rng")),
        || format!("hwrng is not virtio-rng; serial:\n{out}"),
    )?;
    expect_field(&out, "alive", "yes")?;
    let after = std::fs::read(&rw)?;
    check(&after[4096..4096 + 12] == b"HULL-RW-DATA", || {
        "the guest's write is not in the read-write disk's file".into()
    })?;
    let ro_after = std::fs::read(&ro)?;
    check(ro_after == data, || {
        "the read-only disk's file changed".into()
    })
}

/// Connects to guest `port` through hull-vmm's Unix socket, retrying until the
/// guest listens (or `limit` passes).
fn connect_guest(uds: &Path, port: u32, limit: Duration) -> Result<UnixStream, Failed> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("nothing tried");
    while Instant::now() < deadline {
        match try_connect(uds, port) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "could not reach guest port {port} through {}: {last}",
        uds.display()
    )
    .into())
}

fn try_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    // Byte by byte: nothing after the line may be consumed here.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err("closed before OK (no listener yet)".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        Ok(s)
    } else {
        Err(format!("answered {line:?}"))
    }
}

fn fnv1a(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h = (*h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
}

/// The guest probe's pseudo-random stream (xorshift64, same seed).
struct Stream(u64);
impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 32) as u8;
        }
    }
}

fn vsock_uds_args(uds: &Path) -> Vec<String> {
    vec![
        "--vsock-cid".into(),
        "3".into(),
        "--vsock-uds".into(),
        uds.display().to_string(),
    ]
}

const STREAM_BYTES: usize = 64 << 20;

fn vsock_64mib_each_way() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("v.sock");
    let init = format!("/vsock_probe stream 1024 {STREAM_BYTES}; echo \"probe-rc=$?\"\nreboot -f");
    let args = vsock_uds_args(&uds);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = start_vm(dir.path(), &init, &argv);
    let result = (|| -> Result<(), Failed> {
        let mut s = connect_guest(&uds, 1024, Duration::from_secs(120))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let t = Instant::now();
        // Host to guest: bytes of our own, hashed as they go.
        let mut sent_hash = 0xcbf29ce484222325u64;
        let mut buf = vec![0u8; 1 << 16];
        let mut mine = Stream(0x0123456789abcdef);
        for _ in 0..STREAM_BYTES / buf.len() {
            mine.fill(&mut buf);
            fnv1a(&mut sent_hash, &buf);
            s.write_all(&buf)?;
        }
        let up = t.elapsed();
        // Guest to host: the probe's stream, compared as it comes.
        let t = Instant::now();
        let mut theirs = Stream(0x9e3779b97f4a7c15);
        let mut want = vec![0u8; buf.len()];
        for i in 0..STREAM_BYTES / buf.len() {
            s.read_exact(&mut buf)?;
            theirs.fill(&mut want);
            check(buf == want, || {
                format!("guest-to-host stream differs in chunk {i}")
            })?;
        }
        let down = t.elapsed();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line)?;
        let expect = format!("{STREAM_BYTES} {sent_hash:016x}");
        check(line.trim() == expect, || {
            format!("guest read {:?}, host sent {expect:?}", line.trim())
        })?;
        let mbs = |d: Duration| STREAM_BYTES as f64 / 1e6 / d.as_secs_f64();
        eprintln!(
            "vsock 64 MiB: host to guest {:.1} MB/s, guest to host {:.1} MB/s",
            mbs(up),
            mbs(down)
        );
        Ok(())
    })();
    probe_vm_done(vm, result)
}

/// Ends a VM whose init ran the vsock probe: the host side's `result`, then
/// a clean exit and the probe's own status, all with the serial output.
fn probe_vm_done(vm: SerialVm, result: Result<(), Failed>) -> Result<(), Failed> {
    let (code, out) = vm.finish(Duration::from_secs(120));
    result.map_err(|e| format!("{}; serial:\n{out}", e.message().unwrap_or("")))?;
    check(code == Some(0), || {
        format!("hull-vmm exit {code:?}; serial:\n{out}")
    })?;
    expect_field(&out, "probe-rc", "0")
}

/// One echo round trip of `n` bytes on a fresh connection, written and read
/// concurrently so neither side's buffers bound it.
fn echo_round_trip(uds: &Path, n: usize, seed: u64) -> Result<(), Failed> {
    let mut s = connect_guest(uds, 1025, Duration::from_secs(60))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut data = vec![0u8; n];
    Stream(seed).fill(&mut data);
    let mut w = s.try_clone()?;
    let sent = data.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&sent)?;
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = vec![0u8; n];
    s.read_exact(&mut back)?;
    writer.join().map_err(|_| "writer panicked")??;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    check(back == data && rest.is_empty(), || {
        format!("echo of {n} bytes came back different")
    })
}

fn vsock_many_connections_and_guest_dial() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("v.sock");
    // The guest's connection to host port 2000 lands on PATH_2000.
    let listener = UnixListener::bind(dir.path().join("v.sock_2000"))?;
    let init = "/vsock_probe dial 2000 hello-from-guest\n\
                /vsock_probe echo 1025 116; echo \"probe-rc=$?\"\nreboot -f";
    let args = vsock_uds_args(&uds);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let vm = start_vm(dir.path(), init, &argv);
    let result = (|| -> Result<(), Failed> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut from_guest = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("the guest never connected to host port 2000".into());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        };
        from_guest.set_nonblocking(false)?;
        from_guest.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut text = String::new();
        from_guest.read_to_string(&mut text)?;
        check(text == "hello-from-guest", || {
            format!("host port 2000 got {text:?}")
        })?;
        for i in 0..100 {
            echo_round_trip(&uds, 4096, i)
                .map_err(|e| format!("sequential connection {i}: {}", e.message().unwrap_or("")))?;
        }
        let workers: Vec<_> = (0..16u64)
            .map(|i| {
                let uds = uds.clone();
                std::thread::spawn(move || {
                    echo_round_trip(&uds, 1 << 20, 1000 + i).map_err(|e| {
                        format!("concurrent connection {i}: {}", e.message().unwrap_or(""))
                    })
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a connection thread panicked")??;
        }
        Ok(())
    })();
    probe_vm_done(vm, result)
}

fn main() {
    let inside = std::env::var_os("HULL_IN_KVM_HOST").is_some();
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if !listing && !skipping && (!inside || !probe().exists()) {
        build_probe();
    }
    vmtest::run_vm_tests(vec![
        Trial::test(
            "disks_rng_and_sixteen_devices",
            disks_rng_and_sixteen_devices,
        ),
        Trial::test("vsock_64mib_each_way", vsock_64mib_each_way),
        Trial::test(
            "vsock_many_connections_and_guest_dial",
            vsock_many_connections_and_guest_dial,
        ),
    ]);
}
