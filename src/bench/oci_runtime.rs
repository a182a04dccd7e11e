//! runc and crun as bench backends: the namespace baselines users know.
//!
//! Each run: write a bundle (prepare), `create` with the container's stdout on a
//! pipe we hold (create), `start` (start), first byte on the pipe (first output),
//! end of file on the pipe (exit), `delete` (teardown).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::{Backend, BenchError, IDLE_COMMAND, IdleInstance, Phase, Sample, Workload};
use crate::bundle::write_bundle;
use crate::paths::find_in_path;

/// An OCI runtime CLI (`runc` or `crun`) driven through create/start/delete.
#[derive(Debug)]
pub struct OciRuntime {
    name: &'static str,
    binary: Option<PathBuf>,
    workload: Workload,
    /// Holds bundles and the runtime's state (`--root`); removed on drop.
    work_dir: PathBuf,
}

impl OciRuntime {
    pub fn new(name: &'static str, workload: Workload, work_dir: PathBuf) -> OciRuntime {
        OciRuntime {
            name,
            binary: find_in_path(name),
            workload,
            work_dir,
        }
    }

    fn err(&self, message: impl Into<String>) -> BenchError {
        BenchError::Backend {
            backend: self.name.to_string(),
            message: message.into(),
        }
    }

    fn runtime(&self) -> Command {
        let mut c = Command::new(self.binary.as_deref().unwrap_or(self.name.as_ref()));
        c.arg("--root").arg(self.work_dir.join("state"));
        c
    }

    /// Runs a runtime subcommand to completion; its stderr becomes the error.
    fn call(&self, args: &[&str]) -> Result<(), BenchError> {
        let out = self
            .runtime()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.err(format!("cannot run {}: {e}", self.name)))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} {} failed: {}",
                self.name,
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Writes the bundle and creates the container with its stdout on a pipe.
    /// Returns the read end of that pipe.
    fn create(&self, id: &str, args: &[String]) -> Result<(File, Instant), BenchError> {
        let bundle = self.work_dir.join("bundles").join(id);
        write_bundle(&bundle, &self.workload, args, "hull-bench")
            .map_err(|e| self.err(e.to_string()))?;
        let prepared = Instant::now();
        let (reader, writer) = std::io::pipe().map_err(|source| BenchError::Io {
            what: "pipe".into(),
            source,
        })?;
        let errors = self.work_dir.join(format!("{id}.stderr"));
        let stderr = File::create(&errors).map_err(|source| BenchError::Io {
            what: "stderr file".into(),
            source,
        })?;
        let status = self
            .runtime()
            .args(["create", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(stderr)
            .status()
            .map_err(|e| self.err(format!("cannot run {}: {e}", self.name)))?;
        if !status.success() {
            let msg = std::fs::read_to_string(&errors).unwrap_or_default();
            return Err(self.err(format!("{} create failed: {}", self.name, msg.trim())));
        }
        Ok((File::from(std::os::fd::OwnedFd::from(reader)), prepared))
    }

    fn delete(&self, id: &str) -> Result<(), BenchError> {
        let result = self.call(&["delete", "--force", id]);
        let _ = std::fs::remove_dir_all(self.work_dir.join("bundles").join(id));
        let _ = std::fs::remove_file(self.work_dir.join(format!("{id}.stderr")));
        result
    }
}

impl Drop for OciRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

impl Backend for OciRuntime {
    fn name(&self) -> &str {
        self.name
    }

    fn unavailable(&self) -> Option<String> {
        if self.binary.is_none() {
            return Some(format!(
                "{0} is not installed (apt-get install {0})",
                self.name
            ));
        }
        // A runtime may be installed yet refuse this host (crun on hybrid cgroups):
        // one trial run tells.
        let probe = vec!["true".to_string()];
        self.run_once(&format!("probe-{}", std::process::id()), &probe)
            .err()
            .map(|e| format!("refuses this host: {e}"))
    }

    fn not_applicable(&self) -> &'static [Phase] {
        &[Phase::Boot]
    }

    fn run_once(&self, id: &str, args: &[String]) -> Result<Sample, BenchError> {
        let t0 = Instant::now();
        let result = (|| {
            let (mut out, prepared) = self.create(id, args)?;
            let created = Instant::now();
            self.call(&["start", id])?;
            let started = Instant::now();
            let mut byte = [0u8; 1];
            let _ = out.read(&mut byte);
            let first = Instant::now();
            let _ = std::io::copy(&mut out, &mut std::io::sink());
            let exited = Instant::now();
            Ok::<_, BenchError>([
                (Phase::Prepare, prepared),
                (Phase::Create, created),
                (Phase::Start, started),
                (Phase::FirstOutput, first),
                (Phase::Exit, exited),
            ])
        })();
        let deleted = self.delete(id);
        let mut marks = result?.to_vec();
        deleted?;
        marks.push((Phase::Teardown, Instant::now()));
        Ok(Sample::from_marks(t0, &marks))
    }

    fn start_idle(&self, id: &str) -> Result<Box<dyn IdleInstance + '_>, BenchError> {
        let args: Vec<String> = IDLE_COMMAND.iter().map(|s| s.to_string()).collect();
        let (out, _) = self.create(id, &args)?;
        if let Err(e) = self.call(&["start", id]) {
            let _ = self.delete(id);
            return Err(e);
        }
        let mut line = String::new();
        let mut out = BufReader::new(out);
        if out.read_line(&mut line).is_err() || line.trim() != "ready" {
            let _ = self.delete(id);
            return Err(self.err("idle container did not report ready"));
        }
        let pids = self.container_pids(id);
        Ok(Box::new(OciIdle {
            runtime: self,
            id: id.to_string(),
            pids,
            _out: out,
        }))
    }
}

impl OciRuntime {
    /// The container's processes: its init's pid from `state`, and descendants.
    fn container_pids(&self, id: &str) -> Vec<u32> {
        let Ok(out) = self.runtime().args(["state", id]).output() else {
            return Vec::new();
        };
        let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok());
        pid.map(super::stats::process_tree).unwrap_or_default()
    }
}

struct OciIdle<'a> {
    runtime: &'a OciRuntime,
    id: String,
    pids: Vec<u32>,
    _out: BufReader<File>,
}

impl IdleInstance for OciIdle<'_> {
    fn pids(&self) -> Vec<u32> {
        self.pids.clone()
    }

    fn stop(self: Box<Self>) -> Result<(), BenchError> {
        self.runtime.delete(&self.id)
    }
}
