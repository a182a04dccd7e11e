//! The `vm` backend: `hull-vmm` with the guest kernel, the agent's
//! initramfs, one read-only disk per layer and vsock to the agent, all in
//! one `VmConfig` written to the container's state dir.

use std::path::Path;
use std::process::{Command, Stdio};

use hull_vmm::config::{DiskConfig, SerialOutput, VmConfig, VsockConfig};

use super::{GUEST_CID, Isolation, Sandbox, SandboxError, Spec, agent_socket, io};
use crate::{initramfs, paths, sys};

/// The VM's configuration, as `hull-vmm --config` reads it (in the state dir).
pub const VM_CONFIG_FILE: &str = "vmm.json";

pub(super) fn launch(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
    let kernel = match spec.kernel.clone().or_else(paths::chosen_kernel) {
        // Named by the user: say which file is missing.
        Some(k) if !k.is_file() => return Err(SandboxError::KernelNotFound(k)),
        Some(k) => k,
        None => paths::kernel()
            .filter(|k| k.is_file())
            .ok_or(SandboxError::NoKernel)?,
    };
    let vmm = paths::vmm_binary().ok_or(SandboxError::NoVmm)?;
    let agent = paths::agent_binary()
        .filter(|a| a.is_file())
        .ok_or(SandboxError::NoAgent)?;
    let cache = paths::cache_dir().unwrap_or_else(|| spec.dir.to_path_buf());
    let initrd = initramfs::for_agent(&agent, &cache.join("initramfs"))?;
    let mut disks = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let path = match spec.disks.get(i) {
            Some(d) => d.clone(),
            None => {
                let img = spec.dir.join(format!("layer{i}.erofs"));
                erofs_image(layer, &img)?;
                img
            }
        };
        disks.push(DiskConfig {
            path,
            read_only: true,
            id: Some(format!("layer{i}")),
        });
    }
    let socket = agent_socket(Isolation::Vm, spec.dir);
    let console = spec.dir.join("console.log");
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    config.vcpus = spec.vcpus;
    config.mem_mib = spec.memory_mib;
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds: socket.clone(),
    });
    config.serial = SerialOutput::File(console.clone());
    config.boot_timer = true;
    config.rng = true;
    config.disks = disks;
    config.huge_pages = spec.huge_pages;
    if std::env::var_os("HULL_AGENT_DEBUG").is_some() {
        // The kernel hands unknown KEY=VALUE words to init's environment.
        config.cmdline = "HULL_AGENT_DEBUG=1".into();
    }
    let config_path = spec.dir.join(VM_CONFIG_FILE);
    let json = serde_json::to_vec_pretty(&config).expect("a VmConfig serializes");
    std::fs::write(&config_path, json).map_err(|source| SandboxError::VmConfig {
        path: config_path.clone(),
        source,
    })?;
    let log = spec.dir.join("vmm.log");
    let logf = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let mut cmd = Command::new(&vmm);
    cmd.arg("--config").arg(&config_path);
    sys::die_with_parent(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(io(format!("starting {}", vmm.display())))?;
    Ok(Sandbox {
        isolation: Isolation::Vm,
        child,
        socket,
        log,
        console,
        cgroup: None,
        userns_owner: None,
    })
}

/// Makes a read-only erofs image of `dir` (Debian's erofs-utils).
fn erofs_image(dir: &Path, img: &Path) -> Result<(), SandboxError> {
    let out = Command::new("mkfs.erofs")
        .arg(img)
        .arg(dir)
        .output()
        .map_err(SandboxError::ErofsTool)?;
    if !out.status.success() {
        return Err(SandboxError::Erofs {
            dir: dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
