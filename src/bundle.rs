//! OCI runtime bundles (config.json + rootfs) so runc and crun can run the same
//! image and command as hull's own backends, with the same limits.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec, UserBuilder,
};

use crate::bench::Workload;

/// Errors from writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot build the runtime config")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the runtime config for `workload` running `args`, with the rootfs at
/// an absolute path and mounted read-only (every run starts from the same tree).
pub fn runtime_spec(
    workload: &Workload,
    args: &[String],
    hostname: &str,
) -> Result<Spec, BundleError> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(hostname.to_string()));
    if let Some(root) = spec.root_mut() {
        root.set_path(workload.rootfs.clone());
        root.set_readonly(Some(true));
    }
    if let Some(process) = spec.process_mut() {
        process.set_args(Some(args.to_vec()));
        let mut env = workload.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        process.set_env(Some(env));
        process.set_cwd(PathBuf::from(&workload.cwd));
        process.set_terminal(Some(false));
        process.set_user(
            UserBuilder::default()
                .uid(workload.uid)
                .gid(workload.gid)
                .build()?,
        );
    }
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(mib) = workload.memory_mib {
        let bytes = i64::try_from(mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX);
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build()?);
    }
    if let Some(cpus) = workload.cpus {
        let period: u64 = 100_000;
        let quota = (cpus * period as f64).round() as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()?,
        );
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_resources(Some(resources.build()?));
    }
    Ok(spec)
}

/// Writes `dir/config.json` for `workload` and returns the bundle directory.
pub fn write_bundle(
    dir: &Path,
    workload: &Workload,
    args: &[String],
    hostname: &str,
) -> Result<PathBuf, BundleError> {
    let spec = runtime_spec(workload, args, hostname)?;
    std::fs::create_dir_all(dir).map_err(|source| BundleError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| BundleError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&path, json).map_err(|source| BundleError::Write { path, source })?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            rootfs: "/images/busybox".into(),
            env: vec!["A=1".into()],
            cwd: "/tmp".into(),
            uid: 1000,
            gid: 100,
            memory_mib: Some(64),
            cpus: Some(0.5),
        }
    }

    #[test]
    fn spec_carries_command_user_limits_and_readonly_root() {
        let spec = runtime_spec(&workload(), &["echo".into(), "hi".into()], "box").unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["process"]["args"], serde_json::json!(["echo", "hi"]));
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["process"]["user"]["gid"], 100);
        assert_eq!(json["process"]["cwd"], "/tmp");
        let env = json["process"]["env"].as_array().unwrap();
        assert!(
            env.iter().any(|e| e == "A=1")
                && env.iter().any(|e| e.as_str().unwrap().starts_with("PATH="))
        );
        assert_eq!(json["root"]["path"], "/images/busybox");
        assert_eq!(json["root"]["readonly"], true);
        assert_eq!(json["hostname"], "box");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["period"], 100_000);
    }
}
