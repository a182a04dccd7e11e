//! `hull bench`: the same image and command under several isolation backends,
//! side by side (see `crate::bench`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use hull::Isolation;
use hull::bench::{self, Backend, OciRuntime, Plan, Workload, hull_cli::HullCli};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Backends to measure, in order; the first is the baseline for ratios.
    #[arg(long, value_delimiter = ',', default_value = "vm,ns,runc,crun")]
    pub backends: Vec<String>,
    /// Runs per backend.
    #[arg(short = 'n', long = "runs", default_value_t = 10)]
    pub runs: usize,
    /// Parallel runs for throughput; a list (`1,2,4,8,16`) sweeps them, each
    /// reported with its p50/p99 end-to-end time. The largest is also the
    /// number of idle instances for the memory figures.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub concurrency: Vec<usize>,
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

/// What every backend runs: the same tree, command and identity.
struct Target {
    /// The report's name for it: the image, or the rootfs directory.
    label: String,
    /// Arguments of `hull run` naming it (`--rootfs DIR` or `--entrypoint "" IMAGE`).
    hull: Vec<String>,
    /// The full command, after the image's entrypoint and cmd.
    command: Vec<String>,
    workload: Workload,
    /// A read-only overlay of the image's layers for runc and crun, mounted
    /// here and unmounted when the target is dropped.
    overlay: Option<PathBuf>,
}

/// Mounts `layers` (bottom first) as one read-only overlay at `at`.
fn mount_layers_readonly(layers: &[PathBuf], at: &Path) -> std::io::Result<()> {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    hull::sys::mount_overlay_readonly(&lower.join(":"), at)
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(m) = &self.overlay {
            let _ = hull::sys::unmount_detach(m);
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// Resolves `--rootfs DIR CMD...` or `IMAGE [CMD...]` into a [`Target`].
fn target(data_dir: &Path, args: &BenchArgs, work_dir: &Path) -> anyhow::Result<Target> {
    let workload = |rootfs: PathBuf| Workload {
        rootfs,
        env: Vec::new(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        memory_mib: args.memory,
        cpus: args.cpus,
    };
    if let Some(rootfs) = &args.rootfs {
        let rootfs = rootfs
            .canonicalize()
            .with_context(|| format!("rootfs {}", rootfs.display()))?;
        if args.args.is_empty() {
            bail!("no command given: hull bench --rootfs DIR CMD [ARG...]");
        }
        return Ok(Target {
            label: rootfs.display().to_string(),
            hull: vec!["--rootfs".into(), rootfs.display().to_string()],
            command: args.args.clone(),
            workload: workload(rootfs),
            overlay: None,
        });
    }
    let Some(image) = args.args.first() else {
        bail!("no image given: hull bench [OPTIONS] IMAGE [CMD [ARG...]] (or --rootfs DIR CMD)");
    };
    // Layers unpacked (and as disks when vm is measured) before any timing.
    let vm = args.backends.iter().any(|b| b == "vm" || b == "vm-cold");
    let src = super::source::image_source(data_dir, image, &args.args[1..], None, vm)?;
    let config = src.config.clone().unwrap_or_default();
    let (rootfs, overlay) = match src.layers.as_slice() {
        [one] => (one.clone(), None),
        layers => {
            let dir = work_dir.join("rootfs");
            std::fs::create_dir_all(&dir)?;
            mount_layers_readonly(layers, &dir)
                .with_context(|| format!("stacking the layers of {image} for runc and crun"))?;
            (dir.clone(), Some(dir))
        }
    };
    let (user, group) = match config.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (config.user.as_str(), None),
    };
    let id = hull_agent::users::resolve(&rootfs, user, group)
        .with_context(|| format!("the user of {image}"))?;
    let mut w = workload(rootfs);
    w.env = config.env.clone();
    if !config.working_dir.is_empty() {
        w.cwd = config.working_dir.clone();
    }
    w.uid = id.uid;
    w.gid = id.gid;
    Ok(Target {
        label: src.image.clone(),
        // The command below already holds the image's entrypoint.
        hull: vec!["--entrypoint".to_string(), String::new(), image.clone()],
        command: src.argv,
        workload: w,
        overlay,
    })
}

pub fn run(data_dir: &Path, args: BenchArgs) -> anyhow::Result<i32> {
    if args.runs == 0 || args.concurrency.contains(&0) {
        bail!("--runs and --concurrency must be at least 1");
    }
    let work_dir = std::env::temp_dir().join(format!("hull-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;

    let t = target(data_dir, &args, &work_dir)?;
    let mut hull_args = vec!["--data-dir".to_string(), data_dir.display().to_string()];
    if let Some(m) = args.memory {
        hull_args.extend(["--memory".into(), m.to_string()]);
    }
    if let Some(c) = args.cpus {
        hull_args.extend(["--cpus".into(), c.to_string()]);
    }
    hull_args.extend(t.hull.iter().cloned());
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    for name in &args.backends {
        let dir = work_dir.join(name);
        backends.push(match name.as_str() {
            "vm" => Box::new(HullCli::new(
                Isolation::Vm,
                hull_args.clone(),
                dir,
                vm_unavailable(),
            )),
            "vm-cold" => Box::new(
                HullCli::new(Isolation::Vm, hull_args.clone(), dir, vm_unavailable()).cold_boot(),
            ),
            "ns" => Box::new(HullCli::new(Isolation::Ns, hull_args.clone(), dir, None)),
            "runc" => Box::new(OciRuntime::new("runc", t.workload.clone(), dir)),
            "crun" => Box::new(OciRuntime::new("crun", t.workload.clone(), dir)),
            other => bail!("unknown backend {other:?} (known: vm, vm-cold, ns, runc, crun)"),
        });
    }
    for b in &backends {
        std::fs::create_dir_all(work_dir.join(b.name()))?;
    }
    // vm restores the microVM template, made on the first run: made here,
    // untimed, so that no sample holds it.
    if let Some(vm) = backends
        .iter()
        .find(|b| b.name() == "vm" && b.unavailable().is_none())
    {
        eprintln!(
            "hull bench: one untimed vm run first (it makes the microVM template if need be)"
        );
        let _ = vm.run_once("template", &t.command);
    }

    let plan = Plan {
        runs: args.runs,
        concurrency: args.concurrency.iter().copied().max().unwrap_or(1),
        sweep: args.concurrency.clone(),
    };
    let report = bench::run_all(&backends, &t.label, &t.command, &plan);
    drop(backends);
    drop(t);
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
