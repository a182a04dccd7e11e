//! The host fingerprint that heads every bench report.

use super::report::HostFingerprint;
use crate::cgroups;

/// Kernel, CPU, memory, KVM kind and cgroup mode of this host.
pub fn fingerprint() -> HostFingerprint {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim())
        .to_string();
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let cgroup = match cgroups::detect_mode() {
        Ok(mode) => serde_json::to_value(mode)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        Err(e) => format!("unknown ({e})"),
    };
    HostFingerprint {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib,
        kvm: kvm_label(),
        cgroup,
        hull_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// hardware, pvm, emulated-host, missing or unusable.
fn kvm_label() -> String {
    use hull_vmm::kvm::KvmKind;
    let inside_emulated_host = std::env::var_os("HULL_IN_KVM_HOST").is_some_and(|v| v == "1");
    match hull_vmm::kvm::detect_kvm_kind() {
        KvmKind::Hardware { .. } if inside_emulated_host => "emulated-host".into(),
        KvmKind::Hardware { vendor } => format!("hardware ({vendor})"),
        KvmKind::Pvm => "pvm".into(),
        KvmKind::Missing => "missing".into(),
        KvmKind::Unusable(reason) => format!("unusable ({reason})"),
    }
}
