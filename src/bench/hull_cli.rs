//! hull's own backends (`vm`, `ns`) as bench backends, driven through the
//! `hull run` CLI exactly as a user runs it. `hull run` writes its phase
//! timings to the file named by `HULL_TIMINGS_FILE` (see `Timings`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, BenchError, IDLE_COMMAND, IdleInstance, Phase, Sample};
use crate::sandbox::Isolation;

/// Environment variable naming the file `hull run` writes its timings to.
pub const TIMINGS_ENV: &str = "HULL_TIMINGS_FILE";

/// What `hull run` reports about one run: milliseconds per phase, by phase name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub phases_ms: BTreeMap<String, f64>,
}

/// `hull run --isolation vm|ns` as a backend (`vm-cold`: `--isolation vm
/// --cold-boot`).
#[derive(Debug)]
pub struct HullCli {
    name: String,
    isolation: Isolation,
    /// Flags of this backend's own (`--cold-boot`).
    flags: Vec<String>,
    hull: PathBuf,
    /// Arguments naming what to run: `--rootfs DIR` or `IMAGE`, plus limits.
    target: Vec<String>,
    work_dir: PathBuf,
    unavailable: Option<String>,
}

impl HullCli {
    pub fn new(
        isolation: Isolation,
        target: Vec<String>,
        work_dir: PathBuf,
        unavailable: Option<String>,
    ) -> HullCli {
        let hull = std::env::current_exe().unwrap_or_else(|_| "hull".into());
        HullCli {
            name: isolation.name().to_string(),
            isolation,
            flags: Vec::new(),
            hull,
            target,
            work_dir,
            unavailable,
        }
    }

    /// MicroVMs booted, not restored from the template: backend `vm-cold`.
    pub fn cold_boot(mut self) -> HullCli {
        self.name = "vm-cold".into();
        self.flags = vec!["--cold-boot".into()];
        self
    }

    fn err(&self, message: impl Into<String>) -> BenchError {
        BenchError::Backend {
            backend: self.name.clone(),
            message: message.into(),
        }
    }

    fn spawn(&self, args: &[String], timings: Option<&PathBuf>) -> Result<Child, BenchError> {
        let mut c = Command::new(&self.hull);
        // No network, as the runc and crun baselines have none (and the
        // benchmark leaves the machine's network alone).
        c.args(["run", "--rm", "--isolation", self.isolation.name()])
            .args(["--network", "none"])
            .args(&self.flags)
            .args(&self.target)
            .args(args);
        if let Some(t) = timings {
            c.env(TIMINGS_ENV, t);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.err(format!("cannot run hull: {e}")))
    }
}

/// How long one measured `hull run` may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Waits for `child` at most `limit`; then stops it (SIGTERM, SIGKILL five
/// seconds later) and returns None.
fn wait_limited(
    child: &mut Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    // The child is not reaped yet: its pid is still its own.
    let _ = crate::sys::kill(child.id() as i32, libc::SIGTERM);
    let grace = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() {
        if Instant::now() >= grace {
            let _ = child.kill();
            child.wait()?;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(None)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.trim().to_string()
}

impl Backend for HullCli {
    fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self) -> Option<String> {
        self.unavailable.clone()
    }

    fn not_applicable(&self) -> &'static [Phase] {
        if self.isolation == Isolation::Vm {
            &[]
        } else {
            &[Phase::Boot]
        }
    }

    fn run_once(&self, id: &str, args: &[String]) -> Result<Sample, BenchError> {
        let timings_path = self.work_dir.join(format!("{id}.timings.json"));
        let t0 = Instant::now();
        let mut child = self.spawn(args, Some(&timings_path))?;
        let status = wait_limited(&mut child, RUN_LIMIT)
            .map_err(|e| self.err(e.to_string()))?
            .ok_or_else(|| {
                self.err(format!(
                    "hull run did not finish within {} s (stopped it): {}",
                    RUN_LIMIT.as_secs(),
                    stderr_of(&mut child)
                ))
            })?;
        let total = t0.elapsed();
        if !status.success() {
            return Err(self.err(format!(
                "hull run exited with {status}: {}",
                stderr_of(&mut child)
            )));
        }
        let text = std::fs::read_to_string(&timings_path)
            .map_err(|e| self.err(format!("hull run wrote no timings ({e})")))?;
        let _ = std::fs::remove_file(&timings_path);
        let timings: Timings =
            serde_json::from_str(&text).map_err(|e| self.err(format!("bad timings: {e}")))?;
        let mut phases: Vec<(Phase, Duration)> = Phase::ALL
            .iter()
            .filter(|p| **p != Phase::Total)
            .filter_map(|p| {
                let ms = *timings.phases_ms.get(p.name())?;
                (ms.is_finite() && ms >= 0.0).then(|| (*p, Duration::from_secs_f64(ms / 1000.0)))
            })
            .collect();
        phases.push((Phase::Total, total));
        Ok(Sample { phases })
    }

    fn start_idle(&self, _id: &str) -> Result<Box<dyn IdleInstance + '_>, BenchError> {
        let args: Vec<String> = IDLE_COMMAND.iter().map(|s| s.to_string()).collect();
        let mut child = self.spawn(&args, None)?;
        let mut out = BufReader::new(child.stdout.take().ok_or_else(|| self.err("no stdout"))?);
        let mut line = String::new();
        if out.read_line(&mut line).is_err() || line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(self.err(format!(
                "idle instance did not report ready: {}",
                stderr_of(&mut child)
            )));
        }
        Ok(Box::new(HullIdle { child, _out: out }))
    }
}

/// A foreground `hull run` whose container sleeps. Its processes are the
/// `hull` CLI's descendants (VMM, or agent and container processes); the CLI
/// itself only relays stdio and is not counted.
struct HullIdle {
    child: Child,
    _out: BufReader<std::process::ChildStdout>,
}

impl IdleInstance for HullIdle {
    fn pids(&self) -> Vec<u32> {
        let cli = self.child.id();
        super::stats::process_tree(cli)
            .into_iter()
            .filter(|p| *p != cli)
            .collect()
    }

    fn stop(mut self: Box<Self>) -> Result<(), BenchError> {
        // The child is not reaped yet: its pid is still its own.
        let _ = crate::sys::kill(self.child.id() as i32, libc::SIGTERM);
        let _ = self.child.wait();
        Ok(())
    }
}
