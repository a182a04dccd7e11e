//! cgroup limits for the namespace backend, on cgroup v1, v2 and hybrid hosts.
//!
//! A container's cgroup is created under the cgroup hull itself runs in, in each
//! hierarchy that carries a controller hull uses (memory, cpu, pids), so limits
//! set on hull's caller still hold. On a v2 (unified) host that is one directory;
//! on v1 and hybrid hosts, one per controller hierarchy.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors from creating, filling or removing a container's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(&'static str),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot create cgroup {path}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot remove cgroup {path}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("invalid cgroup name {0:?}")]
    InvalidName(String),
}

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    V2,
    Hybrid,
}

/// Limits for one container. `None` leaves the limit unset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth in CPUs (1.5 = one and a half CPUs of time per period).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// The CFS period hull uses for `--cpus`, in microseconds (as docker does).
const CPU_PERIOD_US: u64 = 100_000;

/// One mounted hierarchy: where it is mounted, which controllers it carries,
/// and the cgroup (relative to its root) that this process is in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    controllers: Vec<String>,
    unified: bool,
    own_cgroup: PathBuf,
}

/// A container's cgroup: one directory per hierarchy it lives in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
}

/// Detects the host's cgroup mode from /proc/self/mountinfo.
pub fn detect_mode() -> Result<CgroupMode, CgroupError> {
    let hierarchies = hierarchies()?;
    let v1 = hierarchies
        .iter()
        .any(|h| !h.unified && !h.controllers.is_empty());
    let v2 = hierarchies.iter().any(|h| h.unified);
    Ok(match (v1, v2) {
        (true, true) => CgroupMode::Hybrid,
        (true, false) => CgroupMode::V1,
        _ => CgroupMode::V2,
    })
}

impl Cgroup {
    /// Creates cgroup `name` under hull's own cgroup in every hierarchy that
    /// carries a controller needed by `limits` (and at least the pids or memory
    /// hierarchy, so processes can always be found and killed), and applies the limits.
    pub fn create(name: &str, limits: &CgroupLimits) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(CgroupError::InvalidName(name.to_string()));
        }
        let hierarchies = hierarchies()?;
        let plan = plan(&hierarchies, limits)?;
        let mut cgroup = Cgroup { dirs: Vec::new() };
        for (h, files) in plan {
            let parent = h.mountpoint.join(strip_root(&h.own_cgroup)).join("hull");
            if h.unified {
                enable_v2_controllers(h, &parent, &files)?;
            }
            let dir = parent.join(name);
            fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
            cgroup.dirs.push(dir.clone());
            for (file, value) in files {
                if let Err(e) = write(&dir.join(file), &value) {
                    let _ = cgroup.remove();
                    return Err(e);
                }
            }
        }
        Ok(cgroup)
    }

    /// Moves process `pid` into this cgroup, in every hierarchy.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Every process in the cgroup (from the first hierarchy; all hold the same set).
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let Some(dir) = self.dirs.first() else {
            return Ok(Vec::new());
        };
        let path = dir.join("cgroup.procs");
        let text =
            fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Removes the cgroup's directories. Processes must have exited; the
    /// kernel refuses to remove a cgroup that still has members.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    first_error.get_or_insert(CgroupError::Remove {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The files to write in one hierarchy's cgroup directory.
type PlanEntry<'a> = (&'a Hierarchy, Vec<(&'static str, String)>);

/// Which hierarchies get a directory, and which files are written in each.
fn plan<'a>(
    hierarchies: &'a [Hierarchy],
    limits: &CgroupLimits,
) -> Result<Vec<PlanEntry<'a>>, CgroupError> {
    // A pure v2 host: every controller is in the one unified hierarchy.
    let unified = hierarchies
        .iter()
        .find(|h| h.unified && !h.controllers.is_empty())
        .filter(|_| hierarchies.iter().all(|h| h.unified));
    let find = |controller: &'static str| -> Result<&'a Hierarchy, CgroupError> {
        unified
            .or_else(|| {
                hierarchies
                    .iter()
                    .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))
            })
            .ok_or(CgroupError::NoController(controller))
    };
    let v2 = unified.is_some();
    let mut writes: Vec<(&'a Hierarchy, &'static str, String)> = Vec::new();
    if let Some(bytes) = limits.memory_bytes {
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        writes.push((find("memory")?, file, bytes.to_string()));
    }
    if let Some(cpus) = limits.cpus {
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
        let h = find("cpu")?;
        if v2 {
            writes.push((h, "cpu.max", format!("{quota} {CPU_PERIOD_US}")));
        } else {
            writes.push((h, "cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
            writes.push((h, "cpu.cfs_quota_us", quota.to_string()));
        }
    }
    if let Some(pids) = limits.pids {
        writes.push((find("pids")?, "pids.max", pids.to_string()));
    }

    let mut plan: Vec<PlanEntry<'a>> = Vec::new();
    for (h, file, value) in writes {
        match plan.iter_mut().find(|(p, _)| std::ptr::eq(*p, h)) {
            Some((_, files)) => files.push((file, value)),
            None => plan.push((h, vec![(file, value)])),
        }
    }
    // Always have a hierarchy that tracks the container's processes.
    if plan.is_empty() {
        plan.push((find("pids").or_else(|_| find("memory"))?, Vec::new()));
    }
    Ok(plan)
}

/// On v2, controllers must be enabled in every ancestor's subtree_control.
fn enable_v2_controllers(
    h: &Hierarchy,
    parent: &Path,
    files: &[(&'static str, String)],
) -> Result<(), CgroupError> {
    let mut wanted: Vec<&str> = files
        .iter()
        .filter_map(|(f, _)| f.split('.').next())
        .collect();
    wanted.dedup();
    fs::create_dir_all(parent).map_err(|source| CgroupError::Create {
        path: parent.to_path_buf(),
        source,
    })?;
    let own = h.mountpoint.join(strip_root(&h.own_cgroup));
    for dir in [own.as_path(), parent] {
        for c in &wanted {
            // Already-enabled controllers and those the parent lacks both fail
            // here; a missing one shows up when its limit file is written.
            let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn strip_root(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

fn hierarchies() -> Result<Vec<Hierarchy>, CgroupError> {
    let read = |p: &str| {
        fs::read_to_string(p).map_err(|source| CgroupError::Read {
            path: p.into(),
            source,
        })
    };
    Ok(parse_hierarchies(
        &read("/proc/self/mountinfo")?,
        &read("/proc/self/cgroup")?,
    ))
}

/// Parses mountinfo and /proc/self/cgroup into the mounted hierarchies.
fn parse_hierarchies(mountinfo: &str, proc_cgroup: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mountpoint), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        let unified = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        // A hierarchy mounted twice (bind mounts) counts once.
        if out.iter().any(|h| h.mountpoint == Path::new(mountpoint)) {
            continue;
        }
        let (controllers, own) = if unified {
            let ctl = fs::read_to_string(Path::new(mountpoint).join("cgroup.controllers"))
                .unwrap_or_default();
            let own = own_cgroup(proc_cgroup, |id, _| id == "0");
            (ctl.split_whitespace().map(String::from).collect(), own)
        } else {
            let opts = right.get(2).copied().unwrap_or("");
            let ctl: Vec<String> = opts
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro") && !o.starts_with("name=") && !o.contains('=')
                })
                .filter(|o| KNOWN_V1.contains(o))
                .map(String::from)
                .collect();
            if ctl.is_empty() {
                continue;
            }
            let own = own_cgroup(proc_cgroup, |_, list| {
                list.split(',').any(|c| ctl.iter().any(|x| x == c))
            });
            (ctl, own)
        };
        out.push(Hierarchy {
            mountpoint: PathBuf::from(mountpoint),
            controllers,
            unified,
            own_cgroup: own,
        });
    }
    out
}

const KNOWN_V1: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "pids",
    "blkio",
    "devices",
    "freezer",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];

/// The path in /proc/self/cgroup for the first line whose (id, controllers) match.
fn own_cgroup(proc_cgroup: &str, matches: impl Fn(&str, &str) -> bool) -> PathBuf {
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            Some((it.next()?, it.next()?, it.next()?))
        })
        .find(|(id, list, _)| matches(id, list))
        .map_or_else(|| PathBuf::from("/"), |(_, _, p)| PathBuf::from(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 30 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    const HYBRID_CGROUP: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/box/a\n1:cpu:/\n0::/\n";

    #[test]
    fn parses_hybrid_hierarchies_with_own_cgroup() {
        let hs = parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let names: Vec<_> = hs.iter().map(|h| h.mountpoint.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/pids"
            ]
        );
        let mem = &hs[1];
        assert_eq!(mem.controllers, ["memory"]);
        assert_eq!(mem.own_cgroup, Path::new("/box/a"));
        assert!(hs[0].unified);
    }

    #[test]
    fn v1_plan_writes_each_limit_in_its_hierarchy() {
        let hs = parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let limits = CgroupLimits {
            memory_bytes: Some(64 << 20),
            cpus: Some(1.5),
            pids: Some(100),
        };
        let plan = plan(&hs, &limits).unwrap();
        let flat: Vec<(String, &str, String)> = plan
            .iter()
            .flat_map(|(h, files)| {
                files
                    .iter()
                    .map(|(f, v)| (h.mountpoint.display().to_string(), *f, v.clone()))
            })
            .collect();
        assert_eq!(
            flat,
            [
                (
                    "/sys/fs/cgroup/memory".into(),
                    "memory.limit_in_bytes",
                    "67108864".into()
                ),
                (
                    "/sys/fs/cgroup/cpu".into(),
                    "cpu.cfs_period_us",
                    "100000".into()
                ),
                (
                    "/sys/fs/cgroup/cpu".into(),
                    "cpu.cfs_quota_us",
                    "150000".into()
                ),
                ("/sys/fs/cgroup/pids".into(), "pids.max", "100".into()),
            ]
        );
    }

    #[test]
    fn no_limits_still_tracks_processes() {
        let hs = parse_hierarchies(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let plan = plan(&hs, &CgroupLimits::default()).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].0.mountpoint, Path::new("/sys/fs/cgroup/pids"));
        assert!(plan[0].1.is_empty());
    }

    #[test]
    fn missing_controller_is_an_error() {
        let only_pids = "35 30 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        let hs = parse_hierarchies(only_pids, "8:pids:/\n");
        let limits = CgroupLimits {
            memory_bytes: Some(1),
            ..Default::default()
        };
        assert!(matches!(
            plan(&hs, &limits),
            Err(CgroupError::NoController("memory"))
        ));
    }

    #[test]
    fn rejects_names_that_escape() {
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(matches!(
                Cgroup::create(bad, &CgroupLimits::default()),
                Err(CgroupError::InvalidName(_))
            ));
        }
    }

    /// Needs root: creates a real cgroup on this host, puts a process in it,
    /// reads the limits back, and removes it.
    #[test]
    fn real_cgroup_holds_limits_and_process_as_root() {
        let euid = crate::sys::euid();
        assert_eq!(
            euid, 0,
            "this test needs root: cgroups can only be created as root"
        );
        let name = format!("test-{}", std::process::id());
        let limits = CgroupLimits {
            memory_bytes: Some(48 << 20),
            cpus: Some(0.5),
            pids: Some(16),
        };
        let cg = Cgroup::create(&name, &limits).expect("create cgroup");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        cg.add_process(child.id()).unwrap();
        assert_eq!(cg.pids().unwrap(), [child.id()]);
        let memory_file = cg
            .dirs
            .iter()
            .flat_map(|d| [d.join("memory.max"), d.join("memory.limit_in_bytes")])
            .find(|f| f.exists())
            .expect("a memory limit file");
        assert_eq!(
            fs::read_to_string(memory_file).unwrap().trim(),
            (48u64 << 20).to_string()
        );
        // A cgroup with a live member cannot be removed; after the process is gone it can.
        assert!(cg.remove().is_err());
        child.kill().unwrap();
        child.wait().unwrap();
        cg.remove().unwrap();
        assert!(cg.dirs.iter().all(|d| !d.exists()));
    }
}
