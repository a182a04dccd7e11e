//! `hull bench`: one image and command under several isolation backends, measured
//! the same way: phase timings over N runs, memory of K idle instances, and
//! instances per second at concurrency K.

mod fingerprint;
pub mod hull_cli;
mod oci_runtime;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use fingerprint::fingerprint;
pub use oci_runtime::OciRuntime;
use report::{BackendReport, MemoryReport, Report, SCHEMA_VERSION, SweepPoint};
use stats::Percentiles;

/// The phases of one container's life, in order. A backend reports the ones
/// that apply to it; `Total` is the wall time of the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Rootfs and bundle or disk preparation.
    Prepare,
    /// Creating the sandbox: VMM spawn, or namespaces and mounts.
    Create,
    /// vm only: kernel boot until the agent is ready.
    Boot,
    /// The container process starts.
    Start,
    /// The first byte of the process's output reaches the host.
    FirstOutput,
    /// The process exits and its status reaches the host.
    Exit,
    /// Everything is torn down.
    Teardown,
    Total,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Prepare,
        Phase::Create,
        Phase::Boot,
        Phase::Start,
        Phase::FirstOutput,
        Phase::Exit,
        Phase::Teardown,
        Phase::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Create => "create",
            Phase::Boot => "boot",
            Phase::Start => "start",
            Phase::FirstOutput => "first_output",
            Phase::Exit => "exit",
            Phase::Teardown => "teardown",
            Phase::Total => "total",
        }
    }

    pub fn index_of(name: &str) -> usize {
        Phase::ALL
            .iter()
            .position(|p| p.name() == name)
            .unwrap_or(0)
    }
}

/// One run: how long each phase took.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub phases: Vec<(Phase, Duration)>,
}

impl Sample {
    /// Turns marks taken at the end of each phase into phase durations,
    /// starting from `start`, and adds the total.
    pub fn from_marks(start: Instant, marks: &[(Phase, Instant)]) -> Sample {
        let mut phases = Vec::with_capacity(marks.len() + 1);
        let mut prev = start;
        for (phase, at) in marks {
            phases.push((*phase, at.saturating_duration_since(prev)));
            prev = *at;
        }
        phases.push((Phase::Total, prev.saturating_duration_since(start)));
        Sample { phases }
    }
}

/// Errors from measuring a backend.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The same thing run under every backend.
#[derive(Debug, Clone)]
pub struct Workload {
    /// A directory holding the container's root filesystem (read-only use).
    pub rootfs: PathBuf,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub memory_mib: Option<u64>,
    pub cpus: Option<f64>,
}

/// An isolation backend under measurement.
pub trait Backend: Send + Sync {
    fn name(&self) -> &str;
    /// Why this backend cannot run on this host, or None.
    fn unavailable(&self) -> Option<String>;
    /// Phases this backend does not have (reported as not applicable).
    fn not_applicable(&self) -> &'static [Phase];
    /// Runs `args` once to completion, timing each phase.
    fn run_once(&self, id: &str, args: &[String]) -> Result<Sample, BenchError>;
    /// Starts an instance that stays idle until stopped.
    fn start_idle(&self, id: &str) -> Result<Box<dyn IdleInstance + '_>, BenchError>;
}

/// A running idle instance.
pub trait IdleInstance: Send {
    /// Every process the instance owns on the host.
    fn pids(&self) -> Vec<u32>;
    fn stop(self: Box<Self>) -> Result<(), BenchError>;
}

/// The command an idle instance runs: prints a line once ready, then sleeps.
pub const IDLE_COMMAND: [&str; 3] = ["sh", "-c", "echo ready; exec sleep 3600"];

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Plan {
    pub runs: usize,
    /// Idle instances for the memory figures (the largest of `sweep`).
    pub concurrency: usize,
    /// Parallel workers for each throughput measurement, in order.
    pub sweep: Vec<usize>,
}

/// Measures one backend; failures become the report's reason, never a panic.
pub fn measure(backend: &dyn Backend, args: &[String], plan: &Plan) -> BackendReport {
    let mut report = BackendReport {
        backend: backend.name().to_string(),
        available: false,
        reason: None,
        phases: BTreeMap::new(),
        not_applicable: backend
            .not_applicable()
            .iter()
            .map(|p| p.name().to_string())
            .collect(),
        memory: None,
        instances_per_second: None,
        sweep: Vec::new(),
    };
    if let Some(reason) = backend.unavailable() {
        report.reason = Some(reason);
        return report;
    }
    let mut by_phase: BTreeMap<Phase, Vec<Duration>> = BTreeMap::new();
    for i in 0..plan.runs {
        match backend.run_once(&format!("bench-{}-{i}", std::process::id()), args) {
            Ok(sample) => {
                for (phase, d) in sample.phases {
                    by_phase.entry(phase).or_default().push(d);
                }
            }
            Err(e) => {
                report.reason = Some(format!("run {i} failed: {}", crate::error::chain(&e)));
                return report;
            }
        }
    }
    report.available = true;
    report.phases = by_phase
        .iter()
        .filter_map(|(p, ds)| Some((p.name().to_string(), Percentiles::of(ds)?)))
        .collect();
    match measure_memory(backend, plan.concurrency) {
        Ok(m) => report.memory = Some(m),
        Err(e) => report.reason = Some(format!("memory not measured: {}", crate::error::chain(&e))),
    }
    for &k in &plan.sweep {
        match measure_throughput(backend, args, plan.runs, k) {
            Ok(point) => {
                report.instances_per_second = Some(point.instances_per_second);
                report.sweep.push(point);
            }
            Err(e) => {
                report.reason = Some(format!(
                    "throughput at concurrency {k} not measured: {}",
                    crate::error::chain(&e)
                ));
                break;
            }
        }
    }
    report
}

fn total_pss_mib(instances: &[Box<dyn IdleInstance + '_>]) -> f64 {
    let kib: u64 = instances
        .iter()
        .flat_map(|i| i.pids())
        .filter_map(stats::pss_kib)
        .sum();
    kib as f64 / 1024.0
}

fn measure_memory(backend: &dyn Backend, k: usize) -> Result<MemoryReport, BenchError> {
    let k = k.max(1);
    let mut instances: Vec<Box<dyn IdleInstance + '_>> = Vec::with_capacity(k);
    let result = (|| {
        let mut first = 0.0;
        for i in 0..k {
            instances.push(backend.start_idle(&format!("idle-{}-{i}", std::process::id()))?);
            if i == 0 {
                first = total_pss_mib(&instances);
            }
        }
        let total = total_pss_mib(&instances);
        Ok(MemoryReport {
            instances: k,
            total_pss_mib: total,
            per_instance_pss_mib: total / k as f64,
            marginal_pss_mib: (k > 1).then(|| ((total - first) / (k - 1) as f64).max(0.0)),
        })
    })();
    for i in instances {
        let _ = i.stop();
    }
    result
}

/// `k` parallel workers run `args` to completion, together at least `runs`
/// times (one each at least): completed runs per second, and the spread of
/// their end-to-end times at that load.
fn measure_throughput(
    backend: &dyn Backend,
    args: &[String],
    runs: usize,
    k: usize,
) -> Result<SweepPoint, BenchError> {
    let k = k.max(1);
    let per_worker = runs.div_ceil(k).max(1);
    let first_error: Mutex<Option<BenchError>> = Mutex::new(None);
    let totals: Mutex<Vec<Duration>> = Mutex::new(Vec::with_capacity(k * per_worker));
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..k {
            let (first_error, totals) = (&first_error, &totals);
            s.spawn(move || {
                for i in 0..per_worker {
                    let id = format!("tput-{}-{k}-{w}-{i}", std::process::id());
                    let t = Instant::now();
                    if let Err(e) = backend.run_once(&id, args) {
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                    totals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(t.elapsed());
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let totals = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    let spread = Percentiles::of(&totals).ok_or_else(|| BenchError::Backend {
        backend: backend.name().to_string(),
        message: "no run completed".into(),
    })?;
    Ok(SweepPoint {
        concurrency: k,
        runs: totals.len(),
        instances_per_second: totals.len() as f64 / elapsed,
        total_p50_ms: spread.p50_ms,
        total_p99_ms: spread.p99_ms,
    })
}

/// Measures every backend and assembles the report.
pub fn run_all(backends: &[Box<dyn Backend>], image: &str, args: &[String], plan: &Plan) -> Report {
    Report {
        schema_version: SCHEMA_VERSION,
        host: fingerprint(),
        image: image.to_string(),
        command: args.to_vec(),
        runs: plan.runs,
        concurrency: plan.concurrency,
        backends: backends
            .iter()
            .map(|b| measure(b.as_ref(), args, plan))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_phase_durations_and_total() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let s = Sample::from_marks(
            t0,
            &[
                (Phase::Create, ms(10)),
                (Phase::Start, ms(15)),
                (Phase::Exit, ms(40)),
            ],
        );
        let got: Vec<(Phase, u128)> = s.phases.iter().map(|(p, d)| (*p, d.as_millis())).collect();
        assert_eq!(
            got,
            [
                (Phase::Create, 10),
                (Phase::Start, 5),
                (Phase::Exit, 25),
                (Phase::Total, 40)
            ]
        );
    }
}
