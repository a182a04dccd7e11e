//! The two kinds of step that make a layer: RUN (a container of its own
//! over the image so far, its writable layer's changes read back) and
//! COPY/ADD (files from the context, another stage or an image).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_agent::protocol::{Start, User};
use hull_images::{LayerRecord, Store};

use super::context::Context;
use super::layer::{self, LayerWriter, Overrides};
use super::upper_tar;
use super::{BuildError, io_at};
use crate::client::{Sinks, Times};
use crate::container::Session;
use crate::{Container, ContainerConfig, Isolation, userns};

/// How RUN steps run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub isolation: Isolation,
    pub state_dir: PathBuf,
    pub kernel: Option<PathBuf>,
    pub memory_mib: u64,
}

/// The unpacked layer directories of `layers`, bottom first (and their
/// disks, for vm).
pub fn layer_dirs(
    store: &Store,
    layers: &[LayerRecord],
    disks: bool,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>), BuildError> {
    let mut dirs = Vec::new();
    let mut imgs = Vec::new();
    for l in layers {
        let p = hull_images::layers::prepare(store, l, disks)?;
        dirs.push(p.root);
        imgs.extend(p.disk);
    }
    Ok((dirs, imgs))
}

/// What `rel` is in the image whose layers are `dirs` (bottom first), if
/// it is there: the topmost layer that has it decides; a whiteout there, or
/// above it on a parent, hides it.
pub fn lookup(dirs: &[PathBuf], rel: &Path) -> Option<fs::Metadata> {
    for d in dirs.iter().rev() {
        // A parent whited out (or not a directory) in this layer hides it.
        let mut p = d.clone();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            p.push(c);
            if let Ok(m) = fs::symlink_metadata(&p) {
                if m.file_type().is_char_device() && m.rdev() == 0 || !m.is_dir() {
                    return None;
                }
            }
        }
        if let Ok(m) = fs::symlink_metadata(d.join(rel)) {
            if m.file_type().is_char_device() && m.rdev() == 0 {
                return None;
            }
            return Some(m);
        }
    }
    None
}

/// The mount points the sandbox makes at the top of the root: left out of a
/// RUN's layer when the image did not have them. Not `tmp`: a RUN writes to
/// the image's own /tmp (no tmpfs there, as in docker's and buildah's RUN),
/// and what it leaves there is in its layer.
const SANDBOX_DIRS: [&str; 4] = ["proc", "sys", "dev", "run"];

/// Runs `argv` as a RUN step over `layers`; its changes as a layer (None
/// when it changed nothing).
pub fn run(
    store: &Store,
    settings: &RunSettings,
    layers: &[LayerRecord],
    start: Start,
    warn: &dyn Fn(&str),
) -> Result<Option<LayerRecord>, BuildError> {
    let vm = settings.isolation == Isolation::Vm;
    let (mut dirs, disks) = layer_dirs(store, layers, vm)?;
    let work = store.temp_path("build-run");
    let rw = work.join("rw");
    let mut start = start;
    start.export_upper = vm;
    let result = (|| {
        fs::create_dir_all(&rw).map_err(io_at("creating", &rw))?;
        // ns: the upper is a host dir; vm: an ext4 disk, the guest's own
        // scratch space: the agent sends its changes as a tar, which hull
        // reads with upper_tar's checks (the host never mounts it).
        let upper = if vm {
            let img = work.join("upper.ext4");
            make_ext4(&img)?;
            img
        } else {
            rw.clone()
        };
        let lower_dirs = dirs.clone();
        if dirs.is_empty() {
            let empty = work.join("empty");
            fs::create_dir_all(&empty).map_err(io_at("creating", &empty))?;
            dirs.push(empty);
        }
        let config = ContainerConfig {
            layers: dirs,
            disks,
            memory_mib: settings.memory_mib,
            kernel: settings.kernel.clone(),
            // The step's files keep the ids the Dockerfile gave them.
            userns: userns::Mode::Host,
            upper: Some(upper.clone()),
            ..ContainerConfig::new("hull build", start.argv.clone(), settings.isolation)
        };
        let mut c = Container::create(&settings.state_dir, &config)?;
        let mut times = Times::default();
        let tar_path = work.join("upper.tar");
        let mut sinks = Sinks::terminal();
        if vm {
            let file = fs::File::create(&tar_path).map_err(io_at("creating", &tar_path))?;
            sinks.layer = Some(Box::new(upper_tar::BoundedFile { file, written: 0 }));
        }
        let outcome = c.start().and_then(|()| {
            c.attach(
                &start,
                Session {
                    sinks,
                    stdin: false,
                    raw_terminal: false,
                    times: &mut times,
                    warn,
                },
            )
        });
        let (status, reason) = match &outcome {
            Ok(o) => (o.status(), o.failure().map(str::to_string)),
            Err(e) => (crate::EXIT_HULL_ERROR, Some(crate::error::chain(e))),
        };
        let _ = c.finish(status, reason.clone());
        let _ = c.delete(true);
        outcome?;
        if status != 0 {
            return Err(BuildError::RunFailed {
                command: start.argv.join(" "),
                status,
                reason,
            });
        }
        let mut w = LayerWriter::new(store)?;
        let skip = |r: &Path| {
            r.parent() == Some(Path::new(""))
                && SANDBOX_DIRS.iter().any(|d| r == Path::new(d))
                && lookup(&lower_dirs, r).is_none()
        };
        let read = if vm {
            fs::File::open(&tar_path)
                .map_err(io_at("opening", &tar_path))
                .and_then(|f| {
                    upper_tar::add_upper_tar(&mut w, std::io::BufReader::new(f), &skip)
                        .map_err(BuildError::from)
                })
                .map(drop)
        } else {
            layer::add_upper(&mut w, &rw.join("upper"), Path::new(""), &skip)
                .map_err(BuildError::from)
        };
        if let Err(e) = read {
            w.discard();
            return Err(e);
        }
        if w.is_empty() {
            return Ok(None);
        }
        Ok(Some(w.finish(store)?))
    })();
    let _ = hull_images::store::remove_tree(&work);
    result
}

/// Size of the sparse ext4 disk a RUN step in a microVM writes to.
const UPPER_DISK_BYTES: u64 = 8 << 30;

fn run_tool(cmd: &mut Command, what: &str) -> Result<(), BuildError> {
    let out = cmd.output().map_err(|e| BuildError::Tool {
        what: what.to_string(),
        why: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(BuildError::Tool {
            what: what.to_string(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A sparse, empty ext4 image at `img` (Debian's e2fsprogs).
fn make_ext4(img: &Path) -> Result<(), BuildError> {
    let f = fs::File::create(img).map_err(io_at("creating", img))?;
    f.set_len(UPPER_DISK_BYTES).map_err(io_at("sizing", img))?;
    run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0"])
            .arg(img),
        "mkfs.ext4 (apt-get install e2fsprogs)",
    )
}

/// Where COPY/ADD take files from.
pub enum Source<'a> {
    Context(&'a Context),
    /// The root of another stage or an image (a merged, read-only view).
    Root(&'a Context),
}

/// A COPY or ADD, resolved.
pub struct CopySpec<'a> {
    pub sources: Vec<PathBuf>,
    pub from: Source<'a>,
    /// Absolute destination in the image.
    pub dest: String,
    pub overrides: Overrides,
    /// ADD: local tar archives are extracted.
    pub extract: bool,
}

fn tar_stream(path: &Path) -> Option<Box<dyn Read>> {
    let f = fs::File::open(path).ok()?;
    let mut r = hull_images::unpack::decompress(f).ok()?;
    let mut head = vec![0u8; 512];
    r.read_exact(&mut head).ok()?;
    if &head[257..262] != b"ustar" {
        return None;
    }
    let f = fs::File::open(path).ok()?;
    hull_images::unpack::decompress(f).ok()
}

/// The layer a COPY/ADD makes over the image whose layers are `dirs`.
pub fn copy(
    store: &Store,
    dirs: &[PathBuf],
    spec: &CopySpec<'_>,
) -> Result<LayerRecord, BuildError> {
    let ctx = match &spec.from {
        Source::Context(c) | Source::Root(c) => *c,
    };
    let dest = super::context::clean(&spec.dest);
    let dest_is_dir = spec.dest.ends_with('/')
        || spec.sources.len() > 1
        || lookup(dirs, &dest).is_some_and(|m| m.is_dir());
    let mut w = LayerWriter::new(store)?;
    let owner = spec.overrides.owner.unwrap_or((0, 0));
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    // Parents the image lacks are made (0755, the --chown owner).
    let parents = |w: &mut LayerWriter, name: &Path, made: &mut BTreeSet<PathBuf>| {
        let mut p = PathBuf::new();
        let comps: Vec<_> = name.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            p.push(c);
            if !made.contains(&p) && lookup(dirs, &p).is_none() {
                w.add_dir(&p, 0o755, owner)?;
                made.insert(p.clone());
            }
        }
        Ok::<(), BuildError>(())
    };
    for rel in &spec.sources {
        let full = ctx.root.join(rel);
        let m = fs::symlink_metadata(&full).map_err(io_at("reading", &full))?;
        if m.is_dir() {
            // A directory's contents go into the destination directory.
            parents(&mut w, &dest.join("x"), &mut made)?;
            if !dest.as_os_str().is_empty()
                && lookup(dirs, &dest).is_none()
                && made.insert(dest.clone())
            {
                w.add_dir(&dest, 0o755, owner)?;
            }
            let mut entries = Vec::new();
            match &spec.from {
                Source::Context(c) => c.walk(rel, &mut |p| entries.push(p.to_path_buf()))?,
                Source::Root(c) => c.walk(rel, &mut |p| entries.push(p.to_path_buf()))?,
            }
            for e in entries {
                let name = dest.join(e.strip_prefix(rel).unwrap_or(&e));
                w.add_path(&name, &ctx.root.join(&e), spec.overrides)?;
            }
            continue;
        }
        if spec.extract && m.is_file() {
            if let Some(r) = tar_stream(&full) {
                parents(&mut w, &dest.join("x"), &mut made)?;
                let mut a = tar::Archive::new(r);
                let entries = a.entries().map_err(io_at("reading", &full))?;
                for e in entries {
                    let e = e.map_err(io_at("reading", &full))?;
                    let raw = e.path_bytes().into_owned();
                    let name = super::context::clean(&String::from_utf8_lossy(&raw));
                    if name.as_os_str().is_empty() {
                        continue;
                    }
                    w.add_entry(&dest.join(name), e)?;
                }
                continue;
            }
        }
        let name = if dest_is_dir {
            dest.join(rel.file_name().unwrap_or_default())
        } else {
            dest.clone()
        };
        parents(&mut w, &name, &mut made)?;
        w.add_path(&name, &full, spec.overrides)?;
    }
    Ok(w.finish(store)?)
}

/// A read-only view of an image's layers at `at` (an overlay mount, or the
/// one layer itself); unmounted when dropped.
pub struct MergedView {
    pub root: PathBuf,
    mounted: bool,
}

impl MergedView {
    pub fn new(dirs: &[PathBuf], at: &Path) -> Result<MergedView, BuildError> {
        let mkdir = |p: &Path| fs::create_dir_all(p).map_err(io_at("creating", p));
        match dirs {
            [] => {
                mkdir(at)?;
                Ok(MergedView {
                    root: at.to_path_buf(),
                    mounted: false,
                })
            }
            [one] => Ok(MergedView {
                root: one.clone(),
                mounted: false,
            }),
            _ => {
                mkdir(at)?;
                let lower: Vec<String> =
                    dirs.iter().rev().map(|d| d.display().to_string()).collect();
                let out = Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o"])
                    .arg(format!("ro,lowerdir={}", lower.join(":")))
                    .arg(at)
                    .output()
                    .map_err(io_at("running mount for", at))?;
                if !out.status.success() {
                    return Err(BuildError::Mount(
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ));
                }
                Ok(MergedView {
                    root: at.to_path_buf(),
                    mounted: true,
                })
            }
        }
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = fs::remove_dir(&self.root);
        }
    }
}

/// `name` (or a number) in the image's `file` (etc/passwd, etc/group).
pub fn lookup_id(dirs: &[PathBuf], file: &str, name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let rel = Path::new(file);
    lookup(dirs, rel)?;
    let text = dirs
        .iter()
        .rev()
        .find_map(|d| fs::read_to_string(d.join(rel)).ok())?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// The Start of a RUN step.
pub fn start(argv: Vec<String>, env: Vec<String>, cwd: String, user: &str) -> Start {
    let (user, group) = match user.split_once(':') {
        Some((u, g)) => (u.to_string(), Some(g.to_string())),
        None if user.is_empty() => ("0".to_string(), None),
        None => (user.to_string(), None),
    };
    Start {
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
        user: User { user, group },
        hostname: Some("hull-build".into()),
        ..Start::main(argv, env)
    }
}
