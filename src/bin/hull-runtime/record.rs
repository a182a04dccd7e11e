//! What the runtime keeps beside the library's state of a container
//! (`oci.json` in its state dir): the bundle, annotations, creation time
//! and hooks; the OCI status derived from both; running hooks.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use hull::Container;
use hull::state::Status;
use oci_spec::runtime::Hook;
use serde::{Deserialize, Serialize};

/// The runtime's record, in the container's state dir.
pub const RECORD_FILE: &str = "oci.json";
/// The fifo that holds a created container until `start` reads it.
pub const START_FIFO: &str = "start.fifo";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
    /// The container's seccomp filters (`linux.seccomp`, compiled), for
    /// its exec processes too.
    #[serde(default)]
    pub seccomp: Vec<Vec<hull_agent::protocol::BpfInstruction>>,
}

impl Record {
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(dir: &Path) -> anyhow::Result<Record> {
        let path = dir.join(RECORD_FILE);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&data)?)
    }
}

/// The OCI status of a container: `created` until `start` consumed its
/// fifo, `running` while its processes live, `stopped` after.
pub fn oci_status(c: &Container) -> &'static str {
    match c.state().status {
        Status::Created => "creating",
        Status::Running if c.dir().join(START_FIFO).exists() => "created",
        Status::Running => "running",
        Status::Exited => "stopped",
    }
}

/// runc's `state` JSON for `c`: the pid is its monitor's (the process the
/// engine waits for), 0 once stopped.
pub fn state_json(c: &Container, record: &Record) -> serde_json::Value {
    let status = oci_status(c);
    let pid = match status {
        "stopped" => 0,
        _ => c.state().monitor.map_or(0, |p| p.pid),
    };
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": c.state().name,
        "pid": pid,
        "status": status,
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "owner": "",
        "annotations": record.annotations,
    })
}

/// Runs `hooks` in order, each with the container's state on its stdin;
/// the first that fails (or outlives its timeout) is the error.
pub fn run_hooks(kind: &str, hooks: &[Hook], state: &serde_json::Value) -> anyhow::Result<()> {
    for h in hooks {
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some((first, rest)) = args.split_first() {
                use std::os::unix::process::CommandExt;
                cmd.arg0(first).args(rest);
            }
        }
        if let Some(env) = h.env() {
            cmd.env_clear();
            for e in env {
                if let Some((k, v)) = e.split_once('=') {
                    cmd.env(k, v);
                }
            }
        }
        let what = format!("{kind} hook {}", h.path().display());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {what}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state.to_string().as_bytes());
        }
        let timeout = h.timeout().filter(|&t| t > 0).map(|t| t as u64);
        let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs(t));
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if deadline.is_some_and(|d| std::time::Instant::now() > d) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the {what} did not finish within {} s",
                    timeout.unwrap_or(0)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let err = err.trim().replace('\n', " ");
            bail!(
                "the {what} failed ({status}){}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            );
        }
    }
    Ok(())
}

/// Now, as RFC 3339 with nanoseconds (runc's `created`).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hull::build::image::rfc3339_nanos(now.as_secs(), now.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull::build::image::rfc3339_nanos;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_nanos(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(951_782_400, 5),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339_nanos(1_795_000_000, 0),
            "2026-11-18T11:06:40.000000000Z"
        );
    }

    #[test]
    fn a_failing_hook_is_an_error_naming_it_and_a_hook_reads_the_state() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("state");
        let ok: Hook = serde_json::from_value(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}", out.display())]
        }))
        .unwrap();
        let state = serde_json::json!({"id": "x", "pid": 7});
        run_hooks("prestart", &[ok], &state).unwrap();
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, state);
        let bad: Hook = serde_json::from_value(serde_json::json!({
            "path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 2"]
        }))
        .unwrap();
        let e = run_hooks("prestart", &[bad], &state)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("prestart hook /bin/sh failed") && e.ends_with("nope"),
            "{e}"
        );
    }
}
