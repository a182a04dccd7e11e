//! `hull doctor`: what a user needs to know before a run, each problem with the
//! command that fixes it.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use hull::paths;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    /// Whether `hull run` in a microVM needs this on this host.
    required: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

/// Host tools hull or its tests use, with the Debian package that provides each.
const TOOLS: &[(&str, &str, bool)] = &[
    ("mkfs.erofs", "erofs-utils", true),
    ("qemu-system-x86_64", "qemu-system-x86", false),
    ("busybox", "busybox-static", false),
    ("umoci", "umoci", false),
    ("skopeo", "skopeo", false),
    ("docker-registry", "docker-registry", false),
    ("runc", "runc", false),
    ("crun", "crun", false),
];

pub fn run(args: DoctorArgs) -> anyhow::Result<i32> {
    let mut checks = vec![kvm_check()];
    checks.push(kernel_check());
    checks.push(binary_check(
        "hull-vmm",
        paths::vmm_binary(),
        "cargo build --release -p hull-vmm",
    ));
    checks.push(binary_check(
        "hull-agent",
        paths::agent_binary(),
        "agent/build-static.sh",
    ));
    for (tool, package, required) in TOOLS {
        checks.push(tool_check(tool, package, *required));
    }
    checks.push(cgroup_check());

    let ready = checks.iter().all(|c| c.ok || !c.required);
    if args.json {
        let report = serde_json::json!({ "ready": ready, "checks": checks });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &checks {
            let mark = match (c.ok, c.required) {
                (true, _) => "ok  ",
                (false, true) => "FAIL",
                (false, false) => "warn",
            };
            println!("{mark} {:<20} {}", c.name, c.detail);
            if let (false, Some(fix)) = (c.ok, &c.fix) {
                println!("     {:<20} fix: {fix}", "");
            }
        }
        println!();
        println!(
            "{}",
            if ready {
                "hull is ready to run microVMs on this host."
            } else {
                "hull cannot run microVMs directly on this host yet: see the lines marked FAIL."
            }
        );
    }
    Ok(if ready { 0 } else { 1 })
}

fn kvm_check() -> Check {
    use hull_vmm::kvm::KvmKind;
    let kind = hull_vmm::kvm::detect_kvm_kind();
    let (ok, detail, fix) = match &kind {
        KvmKind::Hardware { vendor } => {
            (true, format!("/dev/kvm is hardware KVM ({vendor})"), None)
        }
        KvmKind::Pvm => (
            false,
            "/dev/kvm is PVM: it cannot boot a stock Linux guest".to_string(),
            Some("run VMs inside the emulated KVM host: tests/kvm-host/run -- hull run ...".into()),
        ),
        KvmKind::Missing => (
            false,
            "/dev/kvm does not exist".to_string(),
            Some("modprobe kvm_intel (or kvm_amd), or use tests/kvm-host/run".into()),
        ),
        KvmKind::Unusable(reason) => (
            false,
            format!("/dev/kvm is not usable: {reason}"),
            Some("run as root or add yourself to the kvm group".into()),
        ),
    };
    Check {
        name: "kvm",
        ok,
        required: true,
        detail,
        fix,
    }
}

fn kernel_check() -> Check {
    let path = paths::kernel();
    let built = path.as_deref().is_some_and(Path::is_file);
    Check {
        name: "guest kernel",
        ok: built,
        required: true,
        detail: match &path {
            Some(p) if built => format!("built: {}", p.display()),
            Some(p) => format!("not built (expected at {})", p.display()),
            None => "not built (no cache directory: HOME is not set)".to_string(),
        },
        fix: Some("guest-kernel/build.sh".into()),
    }
}

fn binary_check(name: &'static str, path: Option<PathBuf>, fix: &str) -> Check {
    match path {
        Some(p) => Check {
            name,
            ok: true,
            required: true,
            detail: p.display().to_string(),
            fix: None,
        },
        None => Check {
            name,
            ok: false,
            required: true,
            detail: "not found".into(),
            fix: Some(fix.into()),
        },
    }
}

fn tool_check(tool: &'static str, package: &str, required: bool) -> Check {
    match paths::find_in_path(tool) {
        Some(p) => Check {
            name: tool,
            ok: true,
            required,
            detail: p.display().to_string(),
            fix: None,
        },
        None => Check {
            name: tool,
            ok: false,
            required,
            detail: if required {
                "missing".into()
            } else {
                "missing (tests and benchmarks use it)".into()
            },
            fix: Some(format!("apt-get install {package}")),
        },
    }
}

fn cgroup_check() -> Check {
    let mode = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)"
    } else if Path::new("/sys/fs/cgroup/memory").exists() {
        "v1"
    } else {
        "none found"
    };
    Check {
        name: "cgroups",
        ok: true,
        required: false,
        detail: mode.into(),
        fix: None,
    }
}
