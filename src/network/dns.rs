//! Names on user-defined networks: a dnsmasq (Debian's dnsmasq-base) per
//! network, listening on the bridge's gateway address, that answers with
//! the network's containers (names and aliases, from a hosts file hull
//! rewrites on every attach and release, then SIGHUPs it) and forwards
//! every other name to the host's resolvers. microVMs reach it like any
//! other address on the bridge. On a dual-stack network the hosts file
//! holds each container's IPv6 address too, so AAAA queries for its
//! names are answered. Started by the first container that joins
//! the network, stopped (by its pid) when the last one leaves.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{Attachment, Network};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("starting dnsmasq for network {0} (apt-get install dnsmasq-base)")]
    Spawn(String, #[source] std::io::Error),
    #[error("dnsmasq for network {network} failed: {stderr}")]
    Failed { network: String, stderr: String },
    #[error("writing {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

fn pid_file(dir: &Path, n: &Network) -> PathBuf {
    dir.join(format!("{}.dnsmasq.pid", n.name))
}

fn hosts_file(dir: &Path, n: &Network) -> PathBuf {
    dir.join(format!("{}.hosts", n.name))
}

/// The dnsmasq serving `n`, if it runs (checked by its command line, so a
/// recycled pid is never signalled).
fn running(dir: &Path, n: &Network) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir, n))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = hosts_file(dir, n);
    let text = String::from_utf8_lossy(&cmdline);
    (text.contains("dnsmasq") && text.contains(&*ours.to_string_lossy())).then_some(pid)
}

/// Makes `n`'s resolver answer for `attached` (its containers): starts it,
/// or has it re-read its hosts file.
pub fn serve(dir: &Path, n: &Network, attached: &[&Attachment]) -> Result<(), DnsError> {
    let hosts = hosts_file(dir, n);
    let text: String = attached
        .iter()
        .map(|a| {
            let mut names = vec![a.name.clone()];
            names.extend(a.aliases.iter().cloned());
            let names = names.join(" ");
            // A dual-stack container answers AAAA queries too.
            match a.ip6 {
                Some(ip6) => format!("{} {names}\n{ip6} {names}\n", a.ip),
                None => format!("{} {names}\n", a.ip),
            }
        })
        .collect();
    std::fs::write(&hosts, text).map_err(|e| DnsError::Write(hosts.clone(), e))?;
    if let Some(pid) = running(dir, n) {
        let _ = sys::kill(pid, libc::SIGHUP);
        return Ok(());
    }
    let log = dir.join(format!("{}.dnsmasq.log", n.name));
    let logf = std::fs::File::create(&log).map_err(|e| DnsError::Write(log.clone(), e))?;
    // It forks into the background: stdout and stderr must not be pipes
    // this call would wait on.
    let mut cmd = Command::new("dnsmasq");
    sys::unblock_signals(&mut cmd);
    let status = cmd
        .arg("--conf-file=/dev/null")
        .arg(format!("--pid-file={}", pid_file(dir, n).display()))
        .arg(format!("--listen-address={}", n.gateway))
        .arg("--bind-interfaces")
        .arg("--except-interface=lo")
        .arg("--no-hosts")
        .arg(format!("--addn-hosts={}", hosts.display()))
        .args(["--user=root", "--group=root", "--cache-size=0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .status()
        .map_err(|e| DnsError::Spawn(n.name.clone(), e))?;
    if !status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let why = log.lines().map(str::trim).find(|l| !l.is_empty());
        return Err(DnsError::Failed {
            network: n.name.clone(),
            stderr: why.map_or_else(|| status.to_string(), str::to_string),
        });
    }
    Ok(())
}

/// Stops `n`'s resolver, if it runs, and removes its files.
pub fn stop(dir: &Path, n: &Network) {
    if let Some(pid) = running(dir, n) {
        let _ = sys::kill(pid, libc::SIGTERM);
        // Gone before its address may be bound again (the next container
        // on this network starts a new one at once).
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while proc.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if proc.exists() {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
    let _ = std::fs::remove_file(pid_file(dir, n));
    let _ = std::fs::remove_file(hosts_file(dir, n));
    let _ = std::fs::remove_file(dir.join(format!("{}.dnsmasq.log", n.name)));
}
