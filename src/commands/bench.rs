//! `hull bench`: the same image and command under several isolation backends,
//! side by side (see `crate::bench`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use crate::bench::{self, Backend, OciRuntime, Plan, Workload, hull_cli::HullCli};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backends to measure, in order; the first is the baseline for ratios.
    #[arg(long, value_delimiter = ',', default_value = "vm,ns,runc,crun")]
    pub backends: Vec<String>,
    /// Runs per backend.
    #[arg(short = 'n', long = "runs", default_value_t = 10)]
    pub runs: usize,
    /// Idle instances for the memory figures, and parallel runs for throughput.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Write the report as JSON to FILE (schema: docs/bench-schema.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of the phase breakdown to FILE.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Memory limit in MiB for every backend (guest RAM for vm, cgroup for the others).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// CPU limit for every backend (vCPUs for vm, CPU bandwidth for the others).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Run a root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// IMAGE [CMD [ARG...]], or CMD [ARG...] with --rootfs.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE|CMD"
    )]
    pub args: Vec<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if args.runs == 0 || args.concurrency == 0 {
        bail!("--runs and --concurrency must be at least 1");
    }
    let Some(rootfs) = args.rootfs.clone() else {
        bail!("hull bench needs --rootfs DIR for now (images are resolved by `hull run` itself)");
    };
    let rootfs = rootfs
        .canonicalize()
        .with_context(|| format!("rootfs {}", rootfs.display()))?;
    if args.args.is_empty() {
        bail!("no command given: hull bench --rootfs DIR CMD [ARG...]");
    }
    let command = args.args.clone();
    let workload = Workload {
        rootfs: rootfs.clone(),
        env: Vec::new(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        memory_mib: args.memory,
        cpus: args.cpus,
    };
    let work_dir = std::env::temp_dir().join(format!("hull-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;

    let mut target = vec!["--rootfs".to_string(), rootfs.display().to_string()];
    if let Some(m) = args.memory {
        target.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(c) = args.cpus {
        target.extend(["--cpus".into(), c.to_string()]);
    }
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    for name in &args.backends {
        let dir = work_dir.join(name);
        backends.push(match name.as_str() {
            "vm" => Box::new(HullCli::new("vm", target.clone(), dir, vm_unavailable())),
            "ns" => Box::new(HullCli::new("ns", target.clone(), dir, None)),
            "runc" => Box::new(OciRuntime::new("runc", workload.clone(), dir)),
            "crun" => Box::new(OciRuntime::new("crun", workload.clone(), dir)),
            other => bail!("unknown backend {other:?} (known: vm, ns, runc, crun)"),
        });
    }
    for b in &backends {
        std::fs::create_dir_all(work_dir.join(b.name()))?;
    }

    let plan = Plan {
        runs: args.runs,
        concurrency: args.concurrency,
    };
    let report = bench::run_all(&backends, &rootfs.display().to_string(), &command, plan);
    drop(backends);
    let _ = std::fs::remove_dir_all(&work_dir);

    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(0)
}

/// Why the vm backend cannot run here, if it cannot.
fn vm_unavailable() -> Option<String> {
    use hull_vmm::kvm::KvmKind;
    match hull_vmm::kvm::detect_kvm_kind() {
        KvmKind::Hardware { .. } => None,
        KvmKind::Pvm => Some(
            "/dev/kvm is PVM, which cannot boot a stock Linux guest: run hull bench inside \
             tests/kvm-host/run to measure every backend there"
                .into(),
        ),
        KvmKind::Missing => Some("/dev/kvm does not exist".into()),
        KvmKind::Unusable(r) => Some(format!("/dev/kvm is not usable: {r}")),
    }
}
