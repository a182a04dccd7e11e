//! A bundle's config.json, read with oci-spec, translated into the
//! library's [`ContainerConfig`] and the agent's [`Start`]: the whole of
//! what `hull-runtime create` decides (docs/runtime.md says the rules).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hull::sandbox::RootFs;
use hull::volume::{MountSource, MountSpec};
use hull::{ContainerConfig, Isolation};
use hull_agent::protocol::{Capabilities, NetworkSetup, Privileges, Rlimit, Start, User};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

/// The annotation that picks the backend (`vm` or `ns`).
pub const ISOLATION_ANNOTATION: &str = "hull.isolation";
/// Guest RAM added to a memory limit for the guest kernel and the agent.
pub const VM_HEADROOM_MIB: u64 = 64;
/// Guest RAM (and vCPUs) when the bundle sets no limit, as `hull run`.
pub const VM_DEFAULT_MIB: u64 = 256;
/// The smallest guest hull boots.
const VM_MIN_MIB: u64 = 128;

/// Where the container's network lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetPlan {
    /// No network namespace in the spec: the host's.
    Host,
    /// A new, empty one (the engine may fill it from a hook).
    New,
    /// The engine's, at this path.
    Join(PathBuf),
}

/// A bundle, read.
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

/// What `create` makes of a bundle.
pub struct Plan {
    pub config: ContainerConfig,
    pub start: Start,
    pub net: NetPlan,
    pub terminal: bool,
    /// vm: the engine's /etc/hosts and /etc/resolv.conf, read again by
    /// [`Plan::reread_etc`].
    etc_sources: EtcSources,
}

#[derive(Debug, Default)]
struct EtcSources {
    hosts: Option<PathBuf>,
    resolv: Option<PathBuf>,
}

impl Plan {
    /// Reads the engine's /etc/hosts and /etc/resolv.conf again for the
    /// guest: an engine may rewrite them in its prestart hook (docker puts
    /// its embedded resolver, 127.0.0.11, in resolv.conf there).
    pub fn reread_etc(&mut self) {
        let Some(net) = self.start.network.as_mut() else {
            return;
        };
        for (source, content) in [
            (&self.etc_sources.hosts, &mut net.hosts),
            (&self.etc_sources.resolv, &mut net.resolv_conf),
        ] {
            if let Some(text) = source
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
            {
                *content = Some(text);
            }
        }
    }
}

/// The first `nameserver` of a microVM's resolv.conf when it is on the
/// loopback (docker's embedded resolver, 127.0.0.11, on a user-defined
/// network): the guest reaches it only through a relay.
pub fn loopback_nameserver(plan: &Plan) -> Option<std::net::Ipv4Addr> {
    if plan.config.isolation != Isolation::Vm {
        return None;
    }
    let resolv = plan.start.network.as_ref()?.resolv_conf.as_deref()?;
    first_nameserver(resolv).filter(|a| a.is_loopback())
}

/// The first `nameserver` line's address, when it is IPv4.
fn first_nameserver(resolv: &str) -> Option<std::net::Ipv4Addr> {
    let first = resolv.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("nameserver")).then(|| words.next())?
    })?;
    first.parse().ok()
}

/// Reads `dir/config.json` and checks its root exists.
pub fn load(dir: &Path) -> anyhow::Result<Bundle> {
    let dir = if dir.as_os_str().is_empty() {
        std::env::current_dir().context("the current directory")?
    } else {
        std::path::absolute(dir).with_context(|| format!("bundle {}", dir.display()))?
    };
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: Spec = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid OCI runtime config", path.display()))?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .with_context(|| format!("{}: no root.path", path.display()))?;
    let rootfs = if root.is_absolute() {
        root
    } else {
        dir.join(root)
    };
    if !rootfs.is_dir() {
        bail!(
            "{}: root.path {} is not a directory",
            path.display(),
            rootfs.display()
        );
    }
    Ok(Bundle { dir, spec, rootfs })
}

/// The container `id` of `bundle`; `default` is the backend when the
/// bundle's annotations do not pick one.
pub fn plan(bundle: &Bundle, id: &str, default: Isolation) -> anyhow::Result<Plan> {
    let spec = &bundle.spec;
    let isolation = match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ISOLATION_ANNOTATION))
        .map(String::as_str)
    {
        None => default,
        Some("vm") => Isolation::Vm,
        Some("ns") => Isolation::Ns,
        Some(other) => bail!("annotation {ISOLATION_ANNOTATION}={other}: want vm or ns"),
    };
    let linux = spec.linux().as_ref();
    let mut net = NetPlan::Host;
    let mut userns = hull::userns::Mode::Host;
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        match ns.typ() {
            LinuxNamespaceType::Network => {
                net = match ns.path() {
                    Some(p) => NetPlan::Join(p.clone()),
                    None => NetPlan::New,
                }
            }
            LinuxNamespaceType::User if ns.path().is_some() => {
                bail!("joining an existing user namespace is not supported")
            }
            LinuxNamespaceType::User => userns = hull::userns::Mode::Private,
            // Every hull container has its own of these.
            _ => {}
        }
    }
    let resources = linux.and_then(|l| l.resources().as_ref());
    let limit_mib = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20));
    let cpus = resources
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| Some((c.quota()?, c.period()?)))
        .filter(|&(q, p)| q > 0 && p > 0)
        .map(|(q, p)| (q as u64).div_ceil(p));
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let (vcpus, memory_mib) = match isolation {
        Isolation::Vm => (
            cpus.map_or(1, |c| c.clamp(1, u64::from(host_cpus)) as u32),
            limit_mib.map_or(VM_DEFAULT_MIB, |m| (m + VM_HEADROOM_MIB).max(VM_MIN_MIB)),
        ),
        Isolation::Ns => (
            cpus.map_or(host_cpus, |c| c.clamp(1, u64::from(host_cpus)) as u32),
            limit_mib.unwrap_or_else(host_memory_mib),
        ),
    };
    let process = spec
        .process()
        .as_ref()
        .context("config.json has no process")?;
    let (mounts, etc_files) = mounts(spec, isolation)?;
    let mut start = start_of(process, true)?;
    start.hostname = spec.hostname().clone();
    if let (Some(p), Some(profile)) = (
        start.privileges.as_mut(),
        linux.and_then(|l| l.seccomp().as_ref()),
    ) {
        p.seccomp = crate::seccomp::filters(profile)?;
    }
    if isolation == Isolation::Vm && (etc_files.hosts.is_some() || etc_files.resolv.is_some()) {
        // No host files in the guest without virtio-fs: their contents go
        // in with the container's network setup.
        start.network = Some(NetworkSetup {
            interface: None,
            hosts: etc_files.hosts,
            resolv_conf: etc_files.resolv,
        });
    }
    let config = ContainerConfig {
        name: Some(id.to_string()),
        image: bundle.dir.display().to_string(),
        command: start.argv.clone(),
        isolation,
        // ns: the bundle's root is the overlay's one lower layer; vm: it is
        // shared into the guest over virtio-fs and mounted as the root, so
        // what the container writes lands in the engine's directory.
        layers: match isolation {
            Isolation::Ns => vec![bundle.rootfs.clone()],
            Isolation::Vm => Vec::new(),
        },
        disks: Vec::new(),
        vcpus,
        memory_mib,
        kernel: None,
        userns,
        huge_pages: true,
        mounts,
        read_only: spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
        network: None,
        upper: None,
        max_starting: None,
        max_guest_memory_mib: None,
        inherit_netns: true,
        rootfs: match isolation {
            Isolation::Ns => RootFs::Layers,
            Isolation::Vm => RootFs::HostDir(bundle.rootfs.clone()),
        },
        cold_boot: false,
    };
    Ok(Plan {
        config,
        terminal: start.tty,
        start,
        net,
        etc_sources: etc_files.sources,
    })
}

/// The agent's Start for an OCI process (the main one or an exec's).
pub fn start_of(process: &Process, main: bool) -> anyhow::Result<Start> {
    let argv = process.args().clone().unwrap_or_default();
    if argv.is_empty() {
        bail!("process.args is empty");
    }
    let user = process.user();
    let (rows, cols) = process
        .console_size()
        .as_ref()
        .map_or((24, 80), |b| (b.height() as u16, b.width() as u16));
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|r| Rlimit {
            name: r
                .typ()
                .to_string()
                .trim_start_matches("RLIMIT_")
                .to_string(),
            soft: r.soft(),
            hard: r.hard(),
        })
        .collect();
    let tty = process.terminal() == Some(true);
    Ok(Start {
        main,
        argv,
        env: process.env().clone().unwrap_or_default(),
        cwd: process.cwd().display().to_string(),
        user: User {
            user: user.uid().to_string(),
            group: Some(user.gid().to_string()),
        },
        hostname: None,
        tty,
        rows: rows.max(1),
        cols: cols.max(1),
        stdin: true,
        rlimits,
        freshen: None,
        network: None,
        export_upper: false,
        root_disks: None,
        privileges: Some(privileges_of(process)?),
    })
}

/// The process's additional gids, capability sets and no_new_privileges
/// (its seccomp filters come from `linux.seccomp`, see [`plan`]).
fn privileges_of(process: &Process) -> anyhow::Result<Privileges> {
    let mask = |set: &Option<oci_spec::runtime::Capabilities>| -> anyhow::Result<u64> {
        let mut bits = 0u64;
        for cap in set.iter().flatten() {
            let name = cap.to_string();
            let n = hull_agent::protocol::capability_number(&name)
                .with_context(|| format!("unknown capability {name}"))?;
            bits |= 1 << n;
        }
        Ok(bits)
    };
    let capabilities = match process.capabilities() {
        Some(c) => Some(Capabilities {
            bounding: mask(c.bounding())?,
            effective: mask(c.effective())?,
            permitted: mask(c.permitted())?,
            inheritable: mask(c.inheritable())?,
            ambient: mask(c.ambient())?,
        }),
        None => None,
    };
    Ok(Privileges {
        additional_gids: process.user().additional_gids().clone().unwrap_or_default(),
        capabilities,
        no_new_privileges: process.no_new_privileges() == Some(true),
        seccomp: Vec::new(),
    })
}

/// The engine's /etc files, read for a microVM.
#[derive(Default)]
struct EtcFiles {
    hosts: Option<String>,
    resolv: Option<String>,
    sources: EtcSources,
}

/// Where the agent makes its own mounts (proc, sysfs, dev, devpts, shm,
/// mqueue, cgroups): the engine's entries for them are left out.
const AGENT_MOUNTS: [&str; 7] = [
    "/proc",
    "/sys",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys/fs/cgroup",
];

/// The spec's mounts as the library's mount specs; in a microVM the
/// engine's /etc files go in by content and a bind of any other file is
/// refused (virtio-fs shares directories).
fn mounts(spec: &Spec, isolation: Isolation) -> anyhow::Result<(Vec<MountSpec>, EtcFiles)> {
    let mut out = Vec::new();
    let mut etc = EtcFiles::default();
    for m in spec.mounts().iter().flatten() {
        let target = m.destination().display().to_string();
        if AGENT_MOUNTS.contains(&target.as_str()) {
            continue;
        }
        let options = m.options().clone().unwrap_or_default();
        let readonly = options.iter().any(|o| o == "ro");
        let kind = m.typ().as_deref().unwrap_or("");
        let is_bind = kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        if kind == "tmpfs" {
            let mut size = None;
            let mut mode = None;
            for o in &options {
                if let Some(v) = o.strip_prefix("size=") {
                    size = Some(hull::volume::spec::parse_size(v)?);
                } else if let Some(v) = o.strip_prefix("mode=") {
                    mode =
                        Some(u32::from_str_radix(v, 8).with_context(|| format!("tmpfs mode {v}"))?);
                }
            }
            out.push(MountSpec {
                source: MountSource::Tmpfs { size, mode },
                target,
                readonly,
                nocopy: true,
                cache: Default::default(),
            });
            continue;
        }
        if !is_bind {
            // mqueue, cgroup, devpts elsewhere: the agent's defaults serve.
            continue;
        }
        let source = m
            .source()
            .clone()
            .with_context(|| format!("bind mount at {target} has no source"))?;
        if isolation == Isolation::Vm {
            match target.as_str() {
                "/etc/hosts" => {
                    etc.hosts = std::fs::read_to_string(&source).ok();
                    etc.sources.hosts = Some(source.clone());
                }
                "/etc/resolv.conf" => {
                    etc.resolv = std::fs::read_to_string(&source).ok();
                    etc.sources.resolv = Some(source.clone());
                }
                // The hostname comes from the spec; podman's marker file is
                // not needed in a guest.
                "/etc/hostname" | "/run/.containerenv" => {}
                // Directories reach the guest over virtio-fs, which shares
                // directories only.
                _ if source.is_dir() => out.push(MountSpec {
                    source: MountSource::Bind { path: source },
                    target,
                    readonly,
                    nocopy: true,
                    cache: Default::default(),
                }),
                _ => bail!(
                    "bind mount of the file {} at {target}: a microVM shares directories only (use the annotation hull.isolation=ns)",
                    source.display()
                ),
            }
            continue;
        }
        out.push(MountSpec {
            source: MountSource::Bind { path: source },
            target,
            readonly,
            nocopy: true,
            cache: Default::default(),
        });
    }
    Ok((out, etc))
}

/// The host's memory in MiB (the ns backend's limit when the bundle sets
/// none).
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(1024, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nameserver_is_read_from_resolv_conf() {
        let docker = "search example.org\nnameserver 127.0.0.11\noptions ndots:0\n";
        assert_eq!(first_nameserver(docker), Some([127, 0, 0, 11].into()));
        assert_eq!(
            first_nameserver("# x\nnameserver 10.0.0.1\nnameserver 127.0.0.11\n"),
            Some([10, 0, 0, 1].into())
        );
        assert_eq!(first_nameserver("nameserver fd00::1\n"), None);
        assert_eq!(first_nameserver("nameserver\n"), None);
        assert_eq!(first_nameserver(""), None);
    }

    fn bundle(config: serde_json::Value) -> (tempfile::TempDir, anyhow::Result<Bundle>) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("rootfs")).unwrap();
        std::fs::write(t.path().join("config.json"), config.to_string()).unwrap();
        let b = load(t.path());
        (t, b)
    }

    fn config() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hostname": "box",
            "process": {
                "args": ["sh", "-c", "exit 3"], "cwd": "/w", "env": ["A=1"],
                "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 1234]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}],
                "capabilities": {
                    "bounding": ["CAP_CHOWN", "CAP_NET_RAW"], "effective": ["CAP_NET_RAW"],
                    "permitted": ["CAP_NET_RAW"], "inheritable": [], "ambient": []
                },
                "noNewPrivileges": true
            },
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind"]},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=65536k", "mode=755"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/x"}],
                "resources": {"memory": {"limit": 134217728}, "cpu": {"quota": 150000, "period": 100000}},
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
                            "syscalls": [{"names": ["read", "exit"], "action": "SCMP_ACT_ALLOW"}]}
            },
            "annotations": {"hull.isolation": "ns"}
        })
    }

    #[test]
    fn a_bundle_becomes_the_librarys_config_and_the_agents_start() {
        let (_t, b) = bundle(config());
        let p = plan(&b.unwrap(), "abc", Isolation::Vm).unwrap();
        assert_eq!(p.config.isolation, Isolation::Ns, "the annotation wins");
        assert_eq!(p.config.name.as_deref(), Some("abc"));
        assert_eq!(p.config.memory_mib, 128);
        assert_eq!(p.net, NetPlan::Join("/run/netns/x".into()));
        assert_eq!(p.start.argv, ["sh", "-c", "exit 3"]);
        assert_eq!(p.start.cwd, "/w");
        assert_eq!(p.start.user.user, "1000");
        assert_eq!(p.start.user.group.as_deref(), Some("100"));
        assert_eq!(p.start.hostname.as_deref(), Some("box"));
        assert_eq!(p.start.rlimits[0].name, "NOFILE");
        assert_eq!(
            (p.start.rlimits[0].soft, p.start.rlimits[0].hard),
            (1024, 2048)
        );
        let privs = p.start.privileges.as_ref().unwrap();
        assert_eq!(privs.additional_gids, [10, 1234]);
        assert!(privs.no_new_privileges);
        let caps = privs.capabilities.unwrap();
        assert_eq!(caps.bounding, (1 << 0) | (1 << 13), "CHOWN and NET_RAW");
        assert_eq!((caps.effective, caps.permitted), (1 << 13, 1 << 13));
        assert_eq!((caps.inheritable, caps.ambient), (0, 0));
        assert_eq!(
            privs.seccomp.len(),
            1,
            "one filter: default EPERM, allow two"
        );
        let targets: Vec<_> = p.config.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/etc/hosts", "/data", "/scratch"]);
        assert!(p.config.mounts[0].readonly && !p.config.mounts[1].readonly);
        assert_eq!(
            p.config.mounts[2].source,
            MountSource::Tmpfs {
                size: Some(65536 << 10),
                mode: Some(0o755)
            }
        );
    }

    #[test]
    fn a_microvm_gets_ram_plus_headroom_vcpus_from_the_quota_and_etc_files_by_content() {
        let mut c = config();
        c["annotations"] = serde_json::json!({});
        c["mounts"] = serde_json::json!([
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind"]}
        ]);
        let (_t, b) = bundle(c);
        let p = plan(&b.unwrap(), "abc", Isolation::Vm).unwrap();
        assert_eq!(p.config.isolation, Isolation::Vm);
        assert_eq!(p.config.memory_mib, 128 + VM_HEADROOM_MIB);
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(p.config.vcpus, 2.min(host));
        assert!(p.config.mounts.is_empty());
        let hosts = p.start.network.unwrap().hosts.unwrap();
        assert_eq!(hosts, std::fs::read_to_string("/etc/hosts").unwrap());
    }

    #[test]
    fn bad_bundles_say_what_is_wrong_in_one_line() {
        let mut c = config();
        c["root"]["path"] = "missing".into();
        let (_t, b) = bundle(c);
        let e = format!("{:#}", b.err().unwrap());
        assert!(
            e.contains("root.path") && e.contains("not a directory"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        let mut c = config();
        c["linux"]["namespaces"] = serde_json::json!([{"type": "bogus"}]);
        let (_t, b) = bundle(c);
        let e = format!("{:#}", b.err().unwrap());
        assert!(
            e.contains("not a valid OCI runtime config") && e.contains("bogus"),
            "{e}"
        );
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("config.json"), "{not json").unwrap();
        let e = format!("{:#}", load(t.path()).err().unwrap());
        assert!(e.contains("not a valid OCI runtime config"), "{e}");
        let mut c = config();
        c["annotations"]["hull.isolation"] = "kvm".into();
        let (_t, b) = bundle(c);
        let e = format!("{:#}", plan(&b.unwrap(), "x", Isolation::Vm).err().unwrap());
        assert!(e.contains("want vm or ns"), "{e}");
    }
}
