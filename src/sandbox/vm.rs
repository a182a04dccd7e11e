//! The `vm` backend: `hull-vmm` with the guest kernel, the agent's
//! initramfs, one read-only disk per layer and vsock to the agent, all in
//! one `VmConfig` written to the container's state dir.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hull_agent::protocol::{Mount, MountKind, VmSetup};
use hull_vmm::config::{
    DiskConfig, FsCache, FsConfig, MacAddr, NetConfig, SerialOutput, VmConfig, VsockConfig,
};

use hull_agent::protocol::RootDisks;

use super::{
    GUEST_CID, Isolation, RootFs, Sandbox, SandboxError, Spec, agent_socket, io, layer_cache,
    template, template_local, vm_jail,
};
use crate::{initramfs, paths, sys, volume};

/// The VM's configuration, as `hull-vmm --config` reads it (in the state dir).
pub const VM_CONFIG_FILE: &str = "vmm.json";
/// The serial of the writable disk that holds the overlay's upper (the
/// agent looks for it).
const UPPER_DISK_ID: &str = "upper";

pub(super) fn launch(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
    let (shares, mut setup) = shares(spec)?;
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
    crate::trace::mark("vm: initramfs");
    let mut disks = Vec::new();
    // A host directory as the root: no layer disks.
    let layers = match spec.rootfs {
        RootFs::Layers => spec.layers.as_slice(),
        RootFs::HostDir(_) => &[],
    };
    for (i, layer) in layers.iter().enumerate() {
        match spec.disks.get(i) {
            Some(d) => disks.push(d.clone()),
            None => disks.push(layer_image(layer, &cache, spec.dir, i)?),
        }
    }
    crate::trace::mark("vm: layer disks");
    let socket = agent_socket(Isolation::Vm, spec.dir);
    let console = spec.dir.join("console.log");
    let mut config = vm_config(spec, kernel, initrd, disks);
    config.fs = shares;
    let dax_mib = fs_dax_mib()?;
    if !config.fs.is_empty() {
        config.fs_dax_mib = dax_mib;
    }
    // The kernel hands unknown KEY=VALUE words to init's environment.
    let mut words = Vec::new();
    if std::env::var_os("HULL_AGENT_DEBUG").is_some() {
        words.push("HULL_AGENT_DEBUG=1".to_string());
    }
    // What a template is booted with (the setup reaches a restored guest
    // in its main Start).
    let template_cmdline = words.join(" ");
    if setup != VmSetup::default() {
        words.push(setup.to_cmdline_word());
    }
    config.cmdline = words.join(" ");
    let mut warnings = Vec::new();
    let mut cmd = Command::new(&vmm);
    let mut cold_reason = None;
    match restore_from(spec, &vmm, &config, &template_cmdline, &cache) {
        Ok(Restore::From(t, slots)) => {
            cmd.arg("--restore").arg(&t);
            config.disk_slots = slots.disks;
            if slots.fs > 0 {
                config.fs_slots = slots.fs;
                to_fs_slots(&mut config.fs, &mut setup);
            }
            // The device keeps the template's MAC; the agent gives eth0
            // the container's (NetworkSetup's interface).
            for n in &mut config.nets {
                n.mac = Some(MacAddr(template::TEMPLATE_MAC));
            }
        }
        Ok(Restore::Cold(why)) => cold_reason = Some(why),
        Err(e) => {
            let why = format!("{}: cold-booting instead", crate::error::chain(&e));
            warnings.push(why.clone());
            cold_reason = Some(why);
        }
    };
    crate::trace::mark("vm: template");
    let restored = cold_reason.is_none().then(|| RootDisks {
        layers: layers.len() as u32,
        upper: spec.upper.is_some(),
        setup: setup.clone(),
    });
    let config_path = spec.dir.join(VM_CONFIG_FILE);
    let log = spec.dir.join("vmm.log");
    let logf = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let jail = if vm_jail::enabled() {
        Some(vm_jail::prepare(spec, &mut config, &mut cmd)?)
    } else {
        warnings.push(vm_jail::warning());
        None
    };
    crate::trace::mark("vm: jail");
    let console = match &config.serial {
        SerialOutput::File(p) => p.clone(),
        _ => console,
    };
    let json = serde_json::to_vec_pretty(&config).expect("a VmConfig serializes");
    let written = std::fs::write(&config_path, json).map_err(|source| SandboxError::VmConfig {
        path: config_path.clone(),
        source,
    });
    cmd.arg("--config").arg(&config_path);
    crate::trace::mark("vm: config written");
    if let Some((tap, _)) = &spec.tap {
        // The tap hull made in the container's network namespace
        // (config.nets names its fd), inherited across exec.
        sys::inherit_fd(tap).map_err(io("handing the tap to hull-vmm"))?;
    }
    sys::die_with_parent(&mut cmd);
    let child = written.and_then(|()| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(io(format!("starting {}", vmm.display())))
    });
    crate::trace::mark("vm: spawned");
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            if let Some(j) = &jail {
                j.abandon();
            }
            return Err(e);
        }
    };
    let (cgroup, userns_owner) = match jail {
        Some(j) => (Some(j.cgroup), Some(j.owner)),
        None => (None, None),
    };
    Ok(Sandbox {
        isolation: Isolation::Vm,
        child,
        socket,
        log,
        console,
        cgroup,
        userns_owner,
        warnings,
        restored,
        cold_reason,
        discardable: spec.upper.is_none() && config.fs.is_empty(),
    })
}

/// Tag of the virtio-fs share that is the root (RootFs::HostDir).
const ROOT_TAG: &str = "hullroot";

/// The virtio-fs shares of `spec` (its root when that is a host directory,
/// then one per volume or bind mount, tags `hullroot`, `hullvol0`...) and
/// what the agent does with them (and with tmpfs mounts and --read-only).
fn shares(spec: &Spec<'_>) -> Result<(Vec<FsConfig>, VmSetup), SandboxError> {
    let mut shares = Vec::new();
    let mut setup = VmSetup {
        read_only: spec.read_only,
        ..VmSetup::default()
    };
    if let RootFs::HostDir(dir) = &spec.rootfs {
        shares.push(FsConfig {
            tag: ROOT_TAG.into(),
            path: dir.clone(),
            read_only: spec.read_only,
            cache: FsCache::Auto,
        });
        setup.root_tag = Some(ROOT_TAG.into());
    }
    for m in &spec.mounts {
        let agent = volume::agent_mount(m)
            .ok_or_else(|| SandboxError::UnresolvedMount(m.target.clone()))?;
        let kind = match agent.kind {
            MountKind::Bind { source } => {
                let path = PathBuf::from(source);
                if !path.is_dir() {
                    return Err(SandboxError::VmFileMount(path));
                }
                let tag = format!("hullvol{}", shares.len());
                shares.push(FsConfig {
                    tag: tag.clone(),
                    path,
                    read_only: m.readonly,
                    cache: m.cache,
                });
                MountKind::Virtiofs { tag }
            }
            other => other,
        };
        setup.mounts.push(Mount { kind, ..agent });
    }
    if shares.len() > hull_vmm::config::MAX_FS {
        return Err(SandboxError::TooManyShares(shares.len()));
    }
    Ok((shares, setup))
}

/// Whether a microVM restores a template or boots.
enum Restore {
    /// The template's directory, and its empty slots.
    From(PathBuf, Slots),
    /// Cold boot, and why.
    Cold(String),
}

/// A template's empty slots.
struct Slots {
    disks: usize,
    fs: usize,
}

/// Gives the shares the tags of the template's fs slots (the guest probed
/// those tags when the template booted), and the agent's mounts with them.
fn to_fs_slots(shares: &mut [FsConfig], setup: &mut VmSetup) {
    for (i, f) in shares.iter_mut().enumerate() {
        let slot = hull_vmm::config::fs_slot_tag(i);
        if setup.root_tag.as_ref() == Some(&f.tag) {
            setup.root_tag = Some(slot.clone());
        }
        for m in &mut setup.mounts {
            if let MountKind::Virtiofs { tag } = &mut m.kind {
                if *tag == f.tag {
                    *tag = slot.clone();
                }
            }
        }
        f.tag = slot;
    }
}

/// The template this VM restores, made first if need be, or why it
/// cold-boots: asked to, or for what a template cannot hold (more shares
/// or disks than its slots, more than one network device).
fn restore_from(
    spec: &Spec<'_>,
    vmm: &Path,
    config: &VmConfig,
    cmdline: &str,
    cache: &Path,
) -> Result<Restore, SandboxError> {
    let cold = |why: &str| Ok(Restore::Cold(why.to_string()));
    if spec.cold_boot {
        return cold("--cold-boot");
    }
    if template::cold_boot_by_env() {
        return cold(&format!("{}=1", template::COLD_BOOT_ENV));
    }
    if config.fs.len() > template::FS_SLOTS {
        return cold(&format!(
            "{} shared directories, more than a template's {} fs slots",
            config.fs.len(),
            template::FS_SLOTS
        ));
    }
    if config.nets.len() > 1 {
        return cold("more than one network device");
    }
    let fs_slots = if config.fs.is_empty() {
        0
    } else {
        template::FS_SLOTS
    };
    let Some(initrd) = config.initrd.as_deref() else {
        return cold("no initrd");
    };
    let inputs = template::Inputs {
        vmm,
        kernel: &config.kernel,
        initrd,
        vcpus: config.vcpus,
        mem_mib: config.mem_mib,
        huge_pages: config.huge_pages,
        cmdline,
        net: !config.nets.is_empty(),
        fs_slots,
        fs_dax_mib: config.fs_dax_mib,
    };
    if config.disks.len() > inputs.disk_slots() {
        return cold(&format!(
            "{} disks, more than a template's {} disk slots",
            config.disks.len(),
            inputs.disk_slots()
        ));
    }
    let slots = Slots {
        disks: inputs.disk_slots(),
        fs: fs_slots,
    };
    let dir = template::ensure(cache, &inputs, spec.progress)?;
    crate::trace::mark("vm: template checked");
    Ok(Restore::From(template_local::for_restore(&dir), slots))
}

/// The environment variable that sets the DAX window of each virtio-fs
/// device, MiB (0: none; see docs/volumes.md for the figures behind the
/// default).
pub const FS_DAX_ENV: &str = "HULL_FS_DAX_MIB";

/// The DAX window each virtio-fs device of a microVM gets, MiB: [`FS_DAX_ENV`]
/// (unset or empty: none), or an error naming the variable and its value
/// when that is not a whole number of 2 MiB chunks up to the VMM's limit.
pub fn fs_dax_mib() -> Result<u64, SandboxError> {
    parse_fs_dax_mib(std::env::var_os(FS_DAX_ENV).as_deref())
}

fn parse_fs_dax_mib(value: Option<&std::ffi::OsStr>) -> Result<u64, SandboxError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    value
        .to_str()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|m| m.is_multiple_of(2) && *m <= hull_vmm::config::MAX_FS_DAX_MIB)
        .ok_or_else(|| SandboxError::FsDaxEnv(value.to_string_lossy().into_owned()))
}

/// The VM for `spec`: its kernel and initrd, vCPUs and memory, `disks`
/// (the layers, bottom first) read-only with ids `layer0`..., vsock to the
/// agent's socket, the console in the state dir, and a virtio-net device on
/// the container's tap (its fd, inherited) with the guest's MAC.
fn vm_config(spec: &Spec<'_>, kernel: PathBuf, initrd: PathBuf, disks: Vec<PathBuf>) -> VmConfig {
    let mut config = VmConfig::new(kernel);
    config.initrd = Some(initrd);
    config.vcpus = spec.vcpus;
    config.mem_mib = spec.memory_mib;
    config.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds: agent_socket(Isolation::Vm, spec.dir),
    });
    config.serial = SerialOutput::File(spec.dir.join("console.log"));
    config.boot_timer = true;
    config.rng = true;
    config.disks = disks
        .into_iter()
        .enumerate()
        .map(|(i, path)| DiskConfig {
            path,
            read_only: true,
            id: Some(format!("layer{i}")),
        })
        .collect();
    // A writable ext4 disk the agent uses for the overlay's upper (hull build
    // reads a RUN step's changes from it afterwards).
    if let Some(upper) = &spec.upper {
        config.disks.push(DiskConfig {
            path: upper.clone(),
            read_only: false,
            id: Some(UPPER_DISK_ID.into()),
        });
    }
    config.huge_pages = spec.huge_pages;
    config.nets = spec
        .tap
        .iter()
        .map(|(tap, mac)| NetConfig {
            tap: None,
            fd: Some(tap.as_raw_fd()),
            mac: mac.parse().ok(),
        })
        .collect();
    config
}

/// The read-only erofs disk of the layer directory `layer` (the `i`th):
/// the cache's image of the directory as it is (made there first if need
/// be), or one made in the container's `dir` when the directory cannot be
/// cached (layer_cache::key).
fn layer_image(layer: &Path, cache: &Path, dir: &Path, i: usize) -> Result<PathBuf, SandboxError> {
    let root = cache.join("layers");
    if let Some(key) = layer_cache::key(layer) {
        if let Some(img) = layer_cache::cached(&root, &key) {
            return Ok(img);
        }
        if std::fs::create_dir_all(&root).is_ok() {
            let tmp = root.join(format!("{key}.tmp{}", std::process::id()));
            let kept = erofs_image(layer, &tmp).map(|()| layer_cache::keep(&root, &key, &tmp));
            match kept {
                Ok(Ok(img)) => return Ok(img),
                Ok(Err(_)) => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            let _ = std::fs::remove_file(&tmp);
        }
    }
    let img = dir.join(format!("layer{i}.erofs"));
    erofs_image(layer, &img)?;
    Ok(img)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_dax_setting_is_an_error_naming_it() {
        use std::ffi::OsStr;
        for ok in [
            None,
            Some(""),
            Some("0"),
            Some("2"),
            Some("1024"),
            Some("65536"),
        ] {
            let want = ok
                .filter(|v| !v.is_empty())
                .map_or(0, |v| v.parse().unwrap());
            assert_eq!(
                parse_fs_dax_mib(ok.map(OsStr::new)).unwrap(),
                want,
                "{ok:?}"
            );
        }
        for bad in [
            "abc",
            "1",
            "1023",
            "65538",
            "-2",
            "1 GiB",
            "18446744073709551616",
        ] {
            let e = parse_fs_dax_mib(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "HULL_FS_DAX_MIB={bad:?}: a DAX window is a whole number of MiB, \
                     a multiple of 2, at most 65536 (0: none)"
                )
            );
        }
    }

    #[test]
    fn the_vm_config_file_is_what_hull_vmm_reads() {
        let t = tempfile::tempdir().unwrap();
        let spec = Spec {
            isolation: Isolation::Vm,
            dir: t.path(),
            layers: vec!["/l0".into(), "/l1".into()],
            disks: Vec::new(),
            vcpus: 2,
            memory_mib: 512,
            kernel: None,
            name: "c",
            userns: crate::userns::Mode::Auto,
            huge_pages: false,
            mounts: Vec::new(),
            read_only: false,
            rootfs: RootFs::Layers,
            netns: crate::sandbox::NetNs::New,
            tap: None,
            upper: None,
            cold_boot: false,
            progress: &|_| {},
        };
        let disks = vec![t.path().join("a.erofs"), t.path().join("b.erofs")];
        let config = vm_config(&spec, "/k".into(), "/i".into(), disks.clone());
        let path = t.path().join(VM_CONFIG_FILE);
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let back = VmConfig::from_file(&path).unwrap();
        back.validate().unwrap();
        assert_eq!(back, config);
        assert_eq!((back.vcpus, back.mem_mib, back.huge_pages), (2, 512, false));
        let ids: Vec<_> = back.disks.iter().map(|d| d.id.clone().unwrap()).collect();
        assert_eq!(ids, ["layer0", "layer1"]);
        assert!(back.disks.iter().all(|d| d.read_only));
        assert_eq!(back.disks[1].path, disks[1]);
        assert_eq!(back.vsock.unwrap().uds, t.path().join("vsock.sock"));
        assert_eq!(
            back.serial,
            SerialOutput::File(t.path().join("console.log"))
        );
        assert!(back.nets.is_empty(), "no network, no virtio-net");
        // On a network: one virtio-net device on the tap's fd, the guest
        // taking the veth's MAC.
        let fd = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let raw = fd.as_raw_fd();
        let spec = Spec {
            tap: Some((fd, "02:42:ac:11:00:02".into())),
            ..spec
        };
        let config = vm_config(&spec, "/k".into(), "/i".into(), disks);
        std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let back = VmConfig::from_file(&path).unwrap();
        assert_eq!(back.nets.len(), 1);
        assert_eq!(back.nets[0].fd, Some(raw));
        assert_eq!(
            back.nets[0].mac.map(|m| m.0),
            Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02])
        );
    }

    /// Binds and volumes become shares the agent mounts by tag, tmpfs stays
    /// the agent's, a host directory root is the first share; a file cannot
    /// be shared.
    #[test]
    fn mounts_become_virtio_fs_shares() {
        use crate::volume::{MountSource, MountSpec};
        let t = tempfile::tempdir().unwrap();
        let mount = |source, target: &str, readonly| MountSpec {
            source,
            target: target.into(),
            readonly,
            nocopy: false,
            cache: Default::default(),
        };
        let spec = Spec {
            isolation: Isolation::Vm,
            dir: t.path(),
            layers: Vec::new(),
            disks: Vec::new(),
            vcpus: 1,
            memory_mib: 128,
            kernel: None,
            name: "c",
            userns: crate::userns::Mode::Auto,
            huge_pages: false,
            cold_boot: false,
            progress: &|_| {},
            mounts: vec![
                mount(
                    MountSource::Bind {
                        path: t.path().into(),
                    },
                    "/data",
                    true,
                ),
                mount(
                    MountSource::Tmpfs {
                        size: Some(1 << 20),
                        mode: None,
                    },
                    "/scratch",
                    false,
                ),
            ],
            read_only: true,
            rootfs: RootFs::HostDir("/bundle/rootfs".into()),
            netns: crate::sandbox::NetNs::New,
            tap: None,
            upper: None,
        };
        let (fs, setup) = shares(&spec).unwrap();
        let tags: Vec<_> = fs.iter().map(|f| (f.tag.as_str(), f.read_only)).collect();
        assert_eq!(tags, [("hullroot", true), ("hullvol1", true)]);
        assert_eq!(fs[1].path, t.path());
        assert_eq!(setup.root_tag.as_deref(), Some("hullroot"));
        assert!(setup.read_only);
        assert_eq!(
            setup.mounts[0].kind,
            MountKind::Virtiofs {
                tag: "hullvol1".into()
            }
        );
        assert!(matches!(setup.mounts[1].kind, MountKind::Tmpfs { .. }));
        // Restored: the shares take the template's fs slots' tags, and the
        // agent mounts those.
        let (mut fs, mut setup) = (fs, setup);
        to_fs_slots(&mut fs, &mut setup);
        let tags: Vec<_> = fs.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["hullfs0", "hullfs1"]);
        assert_eq!(setup.root_tag.as_deref(), Some("hullfs0"));
        assert_eq!(
            setup.mounts[0].kind,
            MountKind::Virtiofs {
                tag: "hullfs1".into()
            }
        );
        let file = t.path().join("f");
        std::fs::write(&file, "").unwrap();
        let spec = Spec {
            mounts: vec![mount(MountSource::Bind { path: file }, "/f", false)],
            rootfs: RootFs::Layers,
            ..spec
        };
        assert!(matches!(shares(&spec), Err(SandboxError::VmFileMount(_))));
    }
}
