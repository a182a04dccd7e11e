//! What a container mounts besides its image, as every front end says it:
//! docker's `-v`, `--mount` and `--tmpfs` syntaxes parse into the same
//! [`MountSpec`]s (an OCI runtime's bind mounts map onto them directly).
//! Parsing checks only the text; whether a host directory exists is the
//! caller's question (`-v` creates a missing one, `--mount type=bind` refuses
//! it, as docker does: see [`MountSpec::check_source`]).

use std::path::{Path, PathBuf};

use hull_vmm::config::FsCache;
use serde::{Deserialize, Serialize};

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum MountSource {
    /// A host directory (absolute path).
    Bind { path: PathBuf },
    /// A named volume; `name` is None until an anonymous one (`-v /data`)
    /// is named, `path` (its content directory) None until it is resolved.
    Volume {
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
    /// A fresh tmpfs; `size` in bytes (the kernel's default, half of RAM,
    /// when None), `mode` its root directory's permission bits.
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
}

/// One mount of a container: its source, where it appears in the container,
/// and whether the container may write to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub source: MountSource,
    /// Absolute path inside the container.
    pub target: String,
    pub readonly: bool,
    /// Do not seed an empty named volume from the image (`nocopy`).
    #[serde(default)]
    pub nocopy: bool,
    /// In a microVM: whether the guest caches the share's file data
    /// (docker's consistency modes: `consistent` is [`FsCache::Never`],
    /// `cached` and `delegated` are [`FsCache::Always`], the default is
    /// [`FsCache::Auto`]). A namespace container's bind mount is the
    /// host's own file system either way.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub cache: FsCache,
}

fn is_auto(c: &FsCache) -> bool {
    *c == FsCache::Auto
}

/// Docker's consistency mode (`-v` mode, `--mount consistency=`) as the
/// virtio-fs cache setting that gives it; None for any other word.
fn consistency(mode: &str) -> Option<FsCache> {
    match mode {
        "consistent" => Some(FsCache::Never),
        "cached" | "delegated" => Some(FsCache::Always),
        "default" => Some(FsCache::Auto),
        _ => None,
    }
}

/// A mount the user wrote that hull cannot take; each message names the
/// flag's text, as docker's do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountSpecError {
    #[error("invalid volume specification: {0:?}")]
    VolumeSyntax(String),
    #[error("invalid mode {mode:?} in volume specification {spec:?}")]
    VolumeMode { spec: String, mode: String },
    #[error(
        "{0:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed; to pass a host directory, use an absolute path"
    )]
    VolumeName(String),
    #[error("invalid mount path {0:?}: mount path must be absolute")]
    TargetNotAbsolute(String),
    #[error("invalid mount config: {0:?} is not a valid mount point")]
    TargetRoot(String),
    #[error("invalid field {0:?}: must be a key=value pair")]
    MountField(String),
    #[error("unexpected key {key:?} in {field:?}")]
    MountKey { key: String, field: String },
    #[error("invalid value {value:?} for {key}")]
    MountValue { key: String, value: String },
    #[error("invalid mount type {0:?}: use bind, volume or tmpfs")]
    MountType(String),
    #[error("invalid mount config for type {kind:?}: {what}")]
    MountConfig {
        kind: &'static str,
        what: &'static str,
    },
    #[error("invalid mount config for type \"bind\": bind source path does not exist: {0}")]
    BindSourceMissing(String),
    #[error("invalid size {0:?}: use bytes, or a number with k, m or g")]
    Size(String),
    #[error("invalid tmpfs option {0:?}: use size=N or mode=OCTAL")]
    TmpfsOption(String),
    #[error("duplicate mount point: {0}")]
    Duplicate(String),
}

impl MountSpec {
    /// `-v SRC:DST[:OPTS]`, `-v DST` (an anonymous volume). SRC is a host
    /// directory when it is an absolute path, a volume name otherwise; OPTS
    /// is a comma list of `ro`, `rw`, `nocopy`, a consistency mode
    /// (`consistent`, `cached`, `delegated`) and SELinux's `z`/`Z` (taken
    /// and ignored: nothing here labels files).
    pub fn parse_volume(spec: &str) -> Result<MountSpec, MountSpecError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [dst] => (None, *dst, None),
            [src, dst] => (Some(*src), *dst, None),
            [src, dst, opts] => (Some(*src), *dst, Some(*opts)),
            _ => return Err(MountSpecError::VolumeSyntax(spec.into())),
        };
        if dst.is_empty() || src.is_some_and(str::is_empty) {
            return Err(MountSpecError::VolumeSyntax(spec.into()));
        }
        let mut readonly = false;
        let mut nocopy = false;
        let mut cache = FsCache::Auto;
        for mode in opts.into_iter().flat_map(|o| o.split(',')) {
            match mode {
                "ro" => readonly = true,
                "rw" => readonly = false,
                "nocopy" => nocopy = true,
                "z" | "Z" => {}
                _ => match consistency(mode) {
                    Some(c) if mode != "default" => cache = c,
                    _ => {
                        return Err(MountSpecError::VolumeMode {
                            spec: spec.into(),
                            mode: mode.into(),
                        });
                    }
                },
            }
        }
        let source = match src {
            None => MountSource::Volume {
                name: None,
                path: None,
            },
            Some(s) if s.starts_with('/') => MountSource::Bind { path: s.into() },
            Some(s) => {
                validate_volume_name(s)?;
                MountSource::Volume {
                    name: Some(s.into()),
                    path: None,
                }
            }
        };
        MountSpec::new(source, dst, readonly, nocopy).map(|m| m.with_cache(cache))
    }

    /// `--mount type=bind|volume|tmpfs,src=..,dst=..[,readonly][,tmpfs-size=..]`
    /// (docker's keys and their aliases; `type` defaults to volume).
    pub fn parse_mount<'s>(spec: &'s str) -> Result<MountSpec, MountSpecError> {
        let mut kind = "volume";
        let mut src: Option<&str> = None;
        let mut dst: Option<&str> = None;
        let mut readonly = false;
        let mut nocopy = false;
        let mut size = None;
        let mut mode = None;
        let mut cache = FsCache::Auto;
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (field, None),
            };
            let need =
                |v: Option<&'s str>| v.ok_or_else(|| MountSpecError::MountField(field.into()));
            match key {
                "type" => kind = need(value)?,
                "source" | "src" => src = Some(need(value)?),
                "destination" | "dst" | "target" => dst = Some(need(value)?),
                "readonly" | "ro" => readonly = parse_bool(key, value)?,
                "volume-nocopy" => nocopy = parse_bool(key, value)?,
                "tmpfs-size" => size = Some(parse_size(need(value)?)?),
                "tmpfs-mode" => mode = Some(parse_mode(key, need(value)?)?),
                "consistency" => {
                    let v = need(value)?;
                    cache = consistency(v).ok_or_else(|| MountSpecError::MountValue {
                        key: key.into(),
                        value: v.into(),
                    })?;
                }
                "bind-propagation" => {
                    need(value)?;
                }
                _ => {
                    return Err(MountSpecError::MountKey {
                        key: key.into(),
                        field: field.into(),
                    });
                }
            }
        }
        let Some(dst) = dst else {
            return Err(MountSpecError::MountConfig {
                kind: kind_name(kind)?,
                what: "field Target must not be empty",
            });
        };
        let tmpfs_opts = size.is_some() || mode.is_some();
        let source = match kind {
            "bind" => {
                let Some(path) = src.filter(|s| !s.is_empty()) else {
                    return Err(MountSpecError::MountConfig {
                        kind: "bind",
                        what: "field Source must not be empty",
                    });
                };
                if !path.starts_with('/') {
                    return Err(MountSpecError::MountConfig {
                        kind: "bind",
                        what: "bind source path must be absolute",
                    });
                }
                MountSource::Bind { path: path.into() }
            }
            "volume" => {
                let name = src.filter(|s| !s.is_empty());
                if let Some(n) = name {
                    validate_volume_name(n)?;
                }
                MountSource::Volume {
                    name: name.map(Into::into),
                    path: None,
                }
            }
            "tmpfs" => {
                if src.is_some_and(|s| !s.is_empty()) {
                    return Err(MountSpecError::MountConfig {
                        kind: "tmpfs",
                        what: "field Source must not be specified",
                    });
                }
                MountSource::Tmpfs { size, mode }
            }
            other => return Err(MountSpecError::MountType(other.into())),
        };
        if tmpfs_opts && kind != "tmpfs" {
            return Err(MountSpecError::MountConfig {
                kind: kind_name(kind)?,
                what: "tmpfs options are only for type tmpfs",
            });
        }
        MountSpec::new(source, dst, readonly, nocopy).map(|m| m.with_cache(cache))
    }

    /// `--tmpfs PATH[:OPTS]`: OPTS a comma list of `size=N`, `mode=OCTAL`,
    /// `ro`, `rw`, and the flags nothing here needs to act on (`noexec`,
    /// `nosuid`, `nodev`, `exec`, `suid`, `dev`), which are accepted.
    pub fn parse_tmpfs(spec: &str) -> Result<MountSpec, MountSpecError> {
        let (dst, opts) = spec.split_once(':').unwrap_or((spec, ""));
        let (mut size, mut mode, mut readonly) = (None, None, false);
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => size = Some(parse_size(v)?),
                Some(("mode", v)) => mode = Some(parse_mode("mode", v)?),
                None if opt == "ro" => readonly = true,
                None if opt == "rw" => readonly = false,
                None if ["noexec", "nosuid", "nodev", "exec", "suid", "dev"].contains(&opt) => {}
                _ => return Err(MountSpecError::TmpfsOption(opt.into())),
            }
        }
        MountSpec::new(MountSource::Tmpfs { size, mode }, dst, readonly, false)
    }

    fn new(
        source: MountSource,
        target: &str,
        readonly: bool,
        nocopy: bool,
    ) -> Result<MountSpec, MountSpecError> {
        if !target.starts_with('/') {
            return Err(MountSpecError::TargetNotAbsolute(target.into()));
        }
        let target = normalize_target(target);
        if target == "/" {
            return Err(MountSpecError::TargetRoot(target));
        }
        Ok(MountSpec {
            source,
            target,
            readonly,
            nocopy,
            cache: FsCache::Auto,
        })
    }

    fn with_cache(mut self, cache: FsCache) -> MountSpec {
        self.cache = cache;
        self
    }

    /// Checks a bind mount's host directory: `-v` makes a missing one (as
    /// docker does), `--mount` refuses it (`create_missing` false).
    pub fn check_source(&self, create_missing: bool) -> Result<(), MountSpecError> {
        let MountSource::Bind { path } = &self.source else {
            return Ok(());
        };
        if path.exists() {
            return Ok(());
        }
        if create_missing && std::fs::create_dir_all(path).is_ok() {
            return Ok(());
        }
        Err(MountSpecError::BindSourceMissing(
            path.display().to_string(),
        ))
    }
}

/// Refuses two mounts on one container path (docker: "Duplicate mount point").
pub fn check_targets(mounts: &[MountSpec]) -> Result<(), MountSpecError> {
    let mut seen = std::collections::HashSet::new();
    for m in mounts {
        if !seen.insert(m.target.as_str()) {
            return Err(MountSpecError::Duplicate(m.target.clone()));
        }
    }
    Ok(())
}

/// Docker's rule for a local volume's name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_volume_name(name: &str) -> Result<(), MountSpecError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && name.len() <= 255 {
        Ok(())
    } else {
        Err(MountSpecError::VolumeName(name.into()))
    }
}

/// `/a//b/./c/` -> `/a/b/c`; `..` stays as written for the guest to refuse
/// (the agent resolves targets inside the container's root, never above it).
fn normalize_target(target: &str) -> String {
    let parts: Vec<&str> = Path::new(target)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => s.to_str(),
            std::path::Component::ParentDir => Some(".."),
            _ => None,
        })
        .collect();
    format!("/{}", parts.join("/"))
}

fn kind_name(kind: &str) -> Result<&'static str, MountSpecError> {
    match kind {
        "bind" => Ok("bind"),
        "volume" => Ok("volume"),
        "tmpfs" => Ok("tmpfs"),
        other => Err(MountSpecError::MountType(other.into())),
    }
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, MountSpecError> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(v) => Err(MountSpecError::MountValue {
            key: key.into(),
            value: v.into(),
        }),
    }
}

fn parse_mode(key: &str, value: &str) -> Result<u32, MountSpecError> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| MountSpecError::MountValue {
            key: key.into(),
            value: value.into(),
        })
}

/// Bytes, with docker's binary suffixes (`64m`, `1g`, `512k`, `100b`).
pub fn parse_size(s: &str) -> Result<u64, MountSpecError> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let mult: u64 = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(MountSpecError::Size(s.into())),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| MountSpecError::Size(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(path: &str, target: &str, readonly: bool) -> MountSpec {
        MountSpec {
            source: MountSource::Bind { path: path.into() },
            target: target.into(),
            readonly,
            nocopy: false,
            cache: FsCache::Auto,
        }
    }

    #[test]
    fn volume_flag_takes_host_dirs_names_and_anonymous_volumes() {
        assert_eq!(
            MountSpec::parse_volume("/srv/data:/data").unwrap(),
            bind("/srv/data", "/data", false)
        );
        assert_eq!(
            MountSpec::parse_volume("/srv/data:/data/:ro").unwrap(),
            bind("/srv/data", "/data", true)
        );
        let named = MountSpec::parse_volume("cache:/var/cache:ro,nocopy").unwrap();
        assert_eq!(
            named.source,
            MountSource::Volume {
                name: Some("cache".into()),
                path: None,
            }
        );
        assert!(named.readonly && named.nocopy);
        let anon = MountSpec::parse_volume("/scratch").unwrap();
        assert_eq!(
            anon.source,
            MountSource::Volume {
                name: None,
                path: None
            }
        );
        assert_eq!(anon.target, "/scratch");
    }

    /// Docker's consistency modes choose whether a microVM's guest caches
    /// the share's data; a stored spec without the field reads as the
    /// default.
    #[test]
    fn consistency_modes_set_the_share_cache() {
        let cache = |s: &str| MountSpec::parse_volume(s).unwrap().cache;
        assert_eq!(cache("/srv:/data"), FsCache::Auto);
        assert_eq!(cache("/srv:/data:ro,consistent"), FsCache::Never);
        assert_eq!(cache("v:/data:cached"), FsCache::Always);
        assert_eq!(cache("v:/data:delegated"), FsCache::Always);
        let mount = |s: &str| MountSpec::parse_mount(s).unwrap().cache;
        assert_eq!(
            mount("type=bind,src=/s,dst=/d,consistency=consistent"),
            FsCache::Never
        );
        assert_eq!(mount("src=v,dst=/d,consistency=default"), FsCache::Auto);
        assert_eq!(
            MountSpec::parse_mount("src=v,dst=/d,consistency=eventual").unwrap_err(),
            MountSpecError::MountValue {
                key: "consistency".into(),
                value: "eventual".into()
            }
        );
        assert!(matches!(
            MountSpec::parse_volume("/s:/d:default").unwrap_err(),
            MountSpecError::VolumeMode { .. }
        ));
        let stored = r#"{"source":{"bind":{"path":"/s"}},"target":"/d","readonly":false}"#;
        let old: MountSpec = serde_json::from_str(stored).unwrap();
        assert_eq!(old.cache, FsCache::Auto);
        let json = serde_json::to_string(&MountSpec::parse_volume("/s:/d").unwrap()).unwrap();
        assert!(!json.contains("cache"), "{json}");
        let json = serde_json::to_string(&MountSpec::parse_volume("/s:/d:consistent").unwrap());
        assert!(json.unwrap().contains(r#""cache":"never""#));
    }

    #[test]
    fn volume_flag_refuses_what_docker_refuses_with_one_line() {
        let err = |s: &str| MountSpec::parse_volume(s).unwrap_err();
        assert_eq!(
            err("./data:/data"),
            MountSpecError::VolumeName("./data".into())
        );
        assert!(err("./data:/data").to_string().contains("absolute path"));
        assert_eq!(
            err("/srv:data"),
            MountSpecError::TargetNotAbsolute("data".into())
        );
        assert!(matches!(
            err("/srv:/data:rx"),
            MountSpecError::VolumeMode { .. }
        ));
        assert!(matches!(err("/a:/b:ro:x"), MountSpecError::VolumeSyntax(_)));
        assert_eq!(err("/srv:/"), MountSpecError::TargetRoot("/".into()));
        for e in [err("./data:/data"), err("/srv:data"), err("/a:/b:ro:x")] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn mount_flag_reads_docker_keys_and_aliases() {
        assert_eq!(
            MountSpec::parse_mount("type=bind,source=/srv,target=/data,readonly").unwrap(),
            bind("/srv", "/data", true)
        );
        assert_eq!(
            MountSpec::parse_mount("type=bind,src=/srv,dst=/data,ro=false").unwrap(),
            bind("/srv", "/data", false)
        );
        let vol = MountSpec::parse_mount("src=v1,dst=/v").unwrap();
        assert_eq!(
            vol.source,
            MountSource::Volume {
                name: Some("v1".into()),
                path: None,
            }
        );
        let tmp =
            MountSpec::parse_mount("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1770").unwrap();
        assert_eq!(
            tmp.source,
            MountSource::Tmpfs {
                size: Some(64 << 20),
                mode: Some(0o1770)
            }
        );
    }

    #[test]
    fn mount_flag_errors_name_the_problem() {
        let err = |s: &str| MountSpec::parse_mount(s).unwrap_err();
        assert!(matches!(
            err("type=nfs,dst=/x"),
            MountSpecError::MountType(_)
        ));
        assert!(matches!(
            err("type=bind,src=rel,dst=/x"),
            MountSpecError::MountConfig { kind: "bind", .. }
        ));
        assert!(matches!(
            err("type=bind,dst=/x"),
            MountSpecError::MountConfig { .. }
        ));
        assert!(matches!(
            err("type=bind,src=/x"),
            MountSpecError::MountConfig { .. }
        ));
        assert!(matches!(
            err("colour=red,dst=/x"),
            MountSpecError::MountKey { .. }
        ));
        assert!(matches!(
            err("type=volume,src=v,dst=/x,tmpfs-size=1m"),
            MountSpecError::MountConfig { .. }
        ));
        assert!(matches!(
            err("type=tmpfs,dst=/x,tmpfs-size=lots"),
            MountSpecError::Size(_)
        ));
        assert_eq!(
            err("type=bind,src=/srv,dst=rel"),
            MountSpecError::TargetNotAbsolute("rel".into())
        );
    }

    #[test]
    fn bind_source_must_exist_for_mount_and_is_made_for_volume_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let spec = bind(missing.to_str().unwrap(), "/data", false);
        assert_eq!(
            spec.check_source(false).unwrap_err(),
            MountSpecError::BindSourceMissing(missing.display().to_string())
        );
        assert!(!missing.exists());
        spec.check_source(true).unwrap();
        assert!(missing.is_dir());
    }

    #[test]
    fn tmpfs_flag_takes_size_and_mode() {
        let t = MountSpec::parse_tmpfs("/run/x:size=16m,mode=700,noexec").unwrap();
        assert_eq!(
            t.source,
            MountSource::Tmpfs {
                size: Some(16 << 20),
                mode: Some(0o700)
            }
        );
        assert_eq!(t.target, "/run/x");
        assert_eq!(
            MountSpec::parse_tmpfs("/t").unwrap().source,
            MountSource::Tmpfs {
                size: None,
                mode: None
            }
        );
        assert!(matches!(
            MountSpec::parse_tmpfs("/t:size=0").unwrap_err(),
            MountSpecError::Size(_)
        ));
        assert!(matches!(
            MountSpec::parse_tmpfs("/t:colour=red").unwrap_err(),
            MountSpecError::TmpfsOption(_)
        ));
        assert!(matches!(
            MountSpec::parse_tmpfs("t").unwrap_err(),
            MountSpecError::TargetNotAbsolute(_)
        ));
    }

    #[test]
    fn sizes_use_binary_suffixes_and_refuse_overflow() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert!(parse_size("99999999999999g").is_err());
        assert!(parse_size("1t").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn duplicate_targets_are_refused_and_names_follow_docker() {
        let a = bind("/a", "/data", false);
        let b = MountSpec::parse_tmpfs("/data/").unwrap();
        assert_eq!(
            check_targets(&[a.clone(), b]).unwrap_err(),
            MountSpecError::Duplicate("/data".into())
        );
        check_targets(&[a, bind("/b", "/other", true)]).unwrap();
        for ok in ["v", "my-vol_1.2", "0abc"] {
            validate_volume_name(ok).unwrap();
        }
        for bad in ["", "-v", ".v", "a/b", "a b", "..", "a:b"] {
            assert!(validate_volume_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs_round_trip_through_json_and_refuse_unknown_fields() {
        let spec = MountSpec::parse_mount("type=tmpfs,dst=/t,tmpfs-size=1m").unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<MountSpec>(&json).unwrap(), spec);
        assert!(
            serde_json::from_str::<MountSpec>(
                r#"{"source":{"volume":{"name":null,"size":1}},"target":"/x","readonly":false,"extra":1}"#
            )
            .is_err()
        );
    }
}
