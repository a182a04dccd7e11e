//! hull-vmm's virtio-net end to end, through real KVM (directly on hardware
//! KVM, inside tests/kvm-host elsewhere; see tests/support/vmtest.rs). The
//! test makes a network namespace of its own with two taps in it, so nothing
//! touches the machine's network: one tap hull-vmm opens by name, one the
//! test opens and hands over as an fd. The guest (busybox) sees the MACs it
//! was given, pings the host side over IPv4 and IPv6, and moves 16 MiB over
//! TCP each way with busybox nc, the bytes checked at both ends.

#[path = "support/vmtest.rs"]
mod vmtest;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmtest::{Failed, SerialVm, Trial, check, expect_field, field};

const MAC0: &str = "02:68:75:6c:6c:01";
const MAC1: &str = "02:68:75:6c:6c:02";
/// Bytes moved over TCP each way.
const STREAM_BYTES: usize = 16 << 20;
/// The fd hull-vmm finds the second tap at.
const TAP_FD: RawFd = 10;

/// A network namespace of the test's own, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns, Failed> {
        let name = format!("hull-nettest-{}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS`.
    fn ip(&self, args: &[&str]) -> Result<(), Failed> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a thread that has joined the namespace: the sockets and
    /// taps it makes live there.
    fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, Failed> {
        let path = Path::new("/run/netns").join(&self.name);
        let thread = std::thread::spawn(move || -> std::io::Result<T> {
            let ns = File::open(&path)?;
            // SAFETY: setns on an fd we opened; it changes only this
            // thread's network namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            f()
        });
        let r = thread
            .join()
            .map_err(|_| "a thread in the namespace panicked")?;
        r.map_err(|e| format!("in network namespace {}: {e}", self.name).into())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), Failed> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd} (iproute2) is needed: {e}"))?;
    check(out.status.success(), || {
        format!(
            "{cmd} {} failed (the network tests need root): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `struct ifreq` for TUNSETIFF.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Opens a tap as a parent of a jailed hull-vmm would: IFF_TAP, no packet
/// information, vnet headers.
fn open_tap(name: &str) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _rest: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// A running hull-vmm in the namespace with the busybox initramfs.
fn start_vm(ns: &Netns, dir: &Path, init: &str, tap_fd: RawFd) -> SerialVm {
    let initrd = vmtest::busybox_initramfs(dir, init);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(vmtest::hull_vmm())
        .arg("--kernel")
        .arg(vmtest::kernel())
        .arg("--initrd")
        .arg(initrd)
        .args(["--mem", "256"])
        .args(["--net", &format!("tap=hnet0,mac={MAC0}")])
        .args(["--net", &format!("fd={TAP_FD},mac={MAC1}")]);
    // SAFETY: between fork and exec only dup2/fcntl, which are
    // async-signal-safe; they give the child the tap at TAP_FD, open
    // across exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if tap_fd == TAP_FD {
                libc::fcntl(TAP_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(tap_fd, TAP_FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    SerialVm::spawn(cmd)
}

fn sha256_of(data: &[u8], dir: &Path) -> String {
    let path = dir.join("sha-input");
    std::fs::write(&path, data).expect("writing a temp file");
    vmtest::sha256_hex(&path)
}

/// Waits for one connection on `l` (at most `limit`).
fn accept(l: &TcpListener, limit: Duration) -> std::io::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(120)))?;
                s.set_write_timeout(Some(Duration::from_secs(120)))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

const INIT: &str = r#"mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "eth0-mac=$(cat /sys/class/net/eth0/address)"
echo "eth1-mac=$(cat /sys/class/net/eth1/address)"
echo "eth0-features=$(cat /sys/class/net/eth0/device/features)"
ip link set lo up
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip addr add 10.77.0.2/24 dev eth0
ip -6 addr add fd77::2/64 dev eth0
ip link set eth0 up
ip addr add 10.78.0.2/24 dev eth1
ip link set eth1 up
ping -c 2 -W 30 10.77.0.1 >/dev/null 2>&1; echo "ping4=$?"
ping6 -c 2 -W 30 fd77::1 >/dev/null 2>&1; echo "ping6=$?"
ping -c 2 -W 30 10.78.0.1 >/dev/null 2>&1; echo "ping-eth1=$?"
head -c BYTES /dev/urandom > /tmp/up
echo "up-sha=$(sha256sum /tmp/up | cut -d' ' -f1)"
nc 10.77.0.1 5001 < /tmp/up; echo "up-rc=$?"
rm /tmp/up
nc 10.77.0.1 5002 < /dev/null > /tmp/down; echo "down-rc=$?"
echo "down-sha=$(sha256sum /tmp/down | cut -d' ' -f1)"
echo "down-bytes=$(wc -c < /tmp/down)"
echo done=yes
reboot -f"#;

fn virtio_net_ping_and_tcp_both_ways() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let ns = Netns::new()?;
    ns.ip(&["tuntap", "add", "dev", "hnet0", "mode", "tap"])?;
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "hnet0"])?;
    ns.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "hnet0", "nodad"])?;
    ns.ip(&["link", "set", "hnet0", "up"])?;
    // The second tap exists while the test holds its fd.
    let tap1 = ns.within(|| open_tap("hnet1"))?;
    ns.ip(&["addr", "add", "10.78.0.1/24", "dev", "hnet1"])?;
    ns.ip(&["link", "set", "hnet1", "up"])?;
    let (up_l, down_l) = ns.within(|| {
        Ok((
            TcpListener::bind("10.77.0.1:5001")?,
            TcpListener::bind("10.77.0.1:5002")?,
        ))
    })?;

    let mut down_data = vec![0u8; STREAM_BYTES];
    File::open("/dev/urandom")?.read_exact(&mut down_data)?;
    let down_sha = sha256_of(&down_data, dir.path());

    let init = INIT.replace("BYTES", &STREAM_BYTES.to_string());
    let vm = start_vm(&ns, dir.path(), &init, tap1.as_raw_fd());
    let host = std::thread::spawn(move || -> std::io::Result<(Vec<u8>, Duration, Duration)> {
        let limit = Duration::from_secs(300);
        let mut s = accept(&up_l, limit)?;
        let t = Instant::now();
        let mut up = Vec::with_capacity(STREAM_BYTES);
        s.read_to_end(&mut up)?;
        let up_time = t.elapsed();
        drop(s);
        let mut s = accept(&down_l, limit)?;
        let t = Instant::now();
        s.write_all(&down_data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        // The guest closes once it has read everything.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok((up, up_time, t.elapsed()))
    });
    let (code, out) = vm.finish(Duration::from_secs(900));
    drop(tap1);
    let host = host.join().map_err(|_| "the host side panicked")?;
    let (up, up_time, down_time) =
        host.map_err(|e| format!("host side of the TCP streams: {e}; serial:\n{out}"))?;

    check(code == Some(0), || {
        format!("hull-vmm exit {code:?}; serial:\n{out}")
    })?;
    expect_field(&out, "eth0-mac", MAC0)?;
    expect_field(&out, "eth1-mac", MAC1)?;
    // Offloads and mergeable buffers were negotiated (bit n is character n).
    let features = field(&out, "eth0-features").unwrap_or_default().as_bytes();
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (5, "MAC"),
        (7, "GUEST_TSO4"),
        (11, "HOST_TSO4"),
        (15, "MRG_RXBUF"),
    ] {
        check(features.get(bit) == Some(&b'1'), || {
            format!("the guest did not take {name}; serial:\n{out}")
        })?;
    }
    expect_field(&out, "ping4", "0")?;
    expect_field(&out, "ping6", "0")?;
    expect_field(&out, "ping-eth1", "0")?;
    expect_field(&out, "up-rc", "0")?;
    check(up.len() == STREAM_BYTES, || {
        format!(
            "the host got {} of {STREAM_BYTES} bytes; serial:\n{out}",
            up.len()
        )
    })?;
    expect_field(&out, "up-sha", &sha256_of(&up, dir.path()))?;
    expect_field(&out, "down-rc", "0")?;
    expect_field(&out, "down-bytes", &STREAM_BYTES.to_string())?;
    expect_field(&out, "down-sha", &down_sha)?;
    expect_field(&out, "done", "yes")?;
    let mbs = |d: Duration| STREAM_BYTES as f64 / 1e6 / d.as_secs_f64();
    eprintln!(
        "virtio-net TCP 16 MiB: guest to host {:.1} MB/s, host to guest {:.1} MB/s",
        mbs(up_time),
        mbs(down_time)
    );
    Ok(())
}

fn main() {
    vmtest::run_vm_tests(vec![Trial::test(
        "virtio_net_ping_and_tcp_both_ways",
        virtio_net_ping_and_tcp_both_ways,
    )]);
}
