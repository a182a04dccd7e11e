//! The build's course: the stages the target needs, in order; each step
//! looked up in the layer cache (docker's rule: the parent's key, the
//! instruction, the args in effect and, for COPY/ADD, the content of what
//! it copies), carried out on a miss, and its result recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use hull_images::store::StoreError;
use hull_images::{Reference, Store};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::context::{self, Context};
use super::dockerfile::{self, Command, Dockerfile, Instruction, Stage, Step};
use super::expand;
use super::image::{ImageState, duration_ns};
use super::layer::Overrides;
use super::steps::{self, CopySpec, MergedView, RunSettings, Source};
use super::{BuildError, BuildOptions, Built, Event, io_at};

/// The layer cache: one JSON file per step key with the image it left.
const CACHE_DIR: &str = "build-cache";

struct Builder<'a> {
    opts: &'a BuildOptions,
    store: &'a Store,
    ctx: Context,
    df: Dockerfile,
    file: String,
    /// `--build-arg`s, and which were used.
    build_args: BTreeMap<String, String>,
    used: BTreeSet<String>,
    /// Global ARGs (before the first FROM) with their values.
    global: BTreeMap<String, String>,
    /// Each stage's result (and its final cache key), once built.
    done: Vec<Option<(ImageState, String)>>,
    events: &'a dyn Fn(Event),
    n: usize,
    total: usize,
    cached: usize,
    ran: usize,
    settings: RunSettings,
}

fn sha(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("{:x}", h.finalize())
}

/// Builds the Dockerfile `opts` name; the image is recorded in `store`
/// under each of `opts.tags`.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    events: &dyn Fn(Event),
) -> Result<Built, BuildError> {
    let tags = opts
        .tags
        .iter()
        .map(|t| Reference::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let path = opts
        .dockerfile
        .clone()
        .unwrap_or_else(|| opts.context.join("Dockerfile"));
    let text = fs::read_to_string(&path).map_err(io_at("reading", &path))?;
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let df = dockerfile::parse(&text, &file)?;
    let ctx = Context::open(&opts.context)?;
    let mut b = Builder {
        opts,
        store,
        ctx,
        done: vec![None; df.stages.len()],
        df,
        file,
        build_args: opts.build_args.iter().cloned().collect(),
        used: BTreeSet::new(),
        global: BTreeMap::new(),
        events,
        n: 0,
        total: 0,
        cached: 0,
        ran: 0,
        settings: RunSettings {
            isolation: opts.isolation,
            state_dir: opts.state_dir.clone(),
            kernel: opts.kernel.clone(),
            memory_mib: 1024,
        },
    };
    b.globals()?;
    let target = b.target()?;
    let needed = b.needed(target)?;
    b.total = needed.iter().map(|&i| b.df.stages[i].steps.len() + 1).sum();
    for &i in &needed {
        b.stage(i)?;
    }
    for name in b.build_args.keys() {
        if !b.used.contains(name) {
            (b.events)(Event::Warning(format!(
                "--build-arg {name} was not used by any ARG"
            )));
        }
    }
    let (state, _) = b.done[target].clone().expect("the target stage was built");
    let id = state.commit(store, &tags)?;
    Ok(Built {
        id,
        steps: b.n,
        cached: b.cached,
        ran: b.ran,
    })
}

impl Builder<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            file: self.file.clone(),
            line,
            message: message.into(),
        }
    }

    fn globals(&mut self) -> Result<(), BuildError> {
        for step in self.df.global_args.clone() {
            let Instruction::Arg(args) = &step.instruction else {
                continue;
            };
            for (name, default) in args {
                let value = match self.build_args.get(name) {
                    Some(v) => {
                        self.used.insert(name.clone());
                        Some(v.clone())
                    }
                    None => match default {
                        Some(d) => {
                            Some(self.expand(step.line, d, &|n| self.global.get(n).cloned())?)
                        }
                        None => None,
                    },
                };
                if let Some(v) = value {
                    self.global.insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }

    fn expand(
        &self,
        line: usize,
        word: &str,
        vars: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, BuildError> {
        expand::word(word, self.df.escape, &vars).map_err(|e| self.err(line, e.to_string()))
    }

    /// The stage index `name` means (an AS name or a number).
    fn stage_index(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.df
            .stages
            .iter()
            .position(|s| s.name() == Some(lower.as_str()))
            .or_else(|| name.parse().ok().filter(|i| *i < self.df.stages.len()))
    }

    fn target(&self) -> Result<usize, BuildError> {
        match &self.opts.target {
            None => Ok(self.df.stages.len() - 1),
            Some(t) => self
                .df
                .stages
                .iter()
                .position(|s| s.name() == Some(t.to_ascii_lowercase().as_str()))
                .ok_or_else(|| BuildError::NoTarget(t.clone())),
        }
    }

    /// The FROM image of stage `i`, its global args expanded.
    fn base_image(&self, stage: &Stage) -> Result<String, BuildError> {
        let Instruction::From { image, .. } = &stage.from.instruction else {
            unreachable!("a stage starts with FROM")
        };
        self.expand(stage.from.line, image, &|n| self.global.get(n).cloned())
    }

    /// The stages `target` needs (FROM an earlier stage, COPY --from), in
    /// order, `target` last.
    fn needed(&self, target: usize) -> Result<Vec<usize>, BuildError> {
        let mut need = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !need.insert(i) {
                continue;
            }
            let stage = &self.df.stages[i];
            let image = self.base_image(stage)?;
            if let Some(j) = self.stage_index(&image).filter(|j| *j < i) {
                if stage.name() != Some(image.to_ascii_lowercase().as_str()) {
                    todo.push(j);
                }
            }
            for s in &stage.steps {
                if let Instruction::Copy(c) = &s.instruction {
                    if let Some(from) = &c.from {
                        match self.stage_index(from) {
                            Some(j) if j < i => todo.push(j),
                            Some(_) => {
                                return Err(self.err(
                                    s.line,
                                    format!("COPY --from={from}: a stage can only copy from an earlier one"),
                                ));
                            }
                            None => {} // an image
                        }
                    }
                }
            }
        }
        Ok(need.into_iter().collect())
    }

    fn event(&self, e: Event) {
        (self.events)(e)
    }

    /// The image `name` from the store (pulled when missing).
    fn image(&self, name: &str) -> Result<(ImageState, String), BuildError> {
        if name.eq_ignore_ascii_case("scratch") {
            return Ok((ImageState::scratch(), sha(&["scratch"])));
        }
        let rec = match self.store.find(name) {
            Ok(r) => r,
            Err(StoreError::NoSuchImage(_)) => {
                let r = Reference::parse(name).map_err(crate::image::ImageError::from)?;
                hull_images::registry::pull(self.store, &r, false).map_err(|source| {
                    crate::image::ImageError::Pull {
                        name: name.to_string(),
                        source,
                    }
                })?
            }
            Err(e) => return Err(e.into()),
        };
        let data = self.store.read_blob(&rec.config)?;
        let config: Value = serde_json::from_slice(&data).unwrap_or(Value::Null);
        Ok((
            ImageState::from_record(&rec, config),
            sha(&["image", &rec.config.to_string()]),
        ))
    }

    fn stage(&mut self, i: usize) -> Result<(), BuildError> {
        let stage = self.df.stages[i].clone();
        let label = stage.name().map_or_else(|| i.to_string(), str::to_string);
        self.n += 1;
        self.event(Event::Step {
            n: self.n,
            total: self.total,
            stage: label.clone(),
            text: stage.from.text.clone(),
        });
        let image = self.base_image(&stage)?;
        let (mut state, mut key) = match self.stage_index(&image).filter(|j| *j < i) {
            Some(j) => self.done[j].clone().expect("needed stages are built first"),
            None => self.image(&image)?,
        };
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut cmd_set = false;
        for step in &stage.steps {
            self.n += 1;
            self.event(Event::Step {
                n: self.n,
                total: self.total,
                stage: label.clone(),
                text: step.text.clone(),
            });
            if let Instruction::Arg(list) = &step.instruction {
                for (name, default) in list {
                    let value = if let Some(v) = self.build_args.get(name) {
                        self.used.insert(name.clone());
                        Some(v.clone())
                    } else if let Some(d) = default {
                        Some(self.expand(step.line, d, &|n| lookup(&state, &args, n))?)
                    } else {
                        self.global.get(name).cloned()
                    };
                    if let Some(v) = value {
                        args.insert(name.clone(), v);
                    }
                }
                let list: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                key = sha(&[&key, &step.text, &list.join("\n")]);
                continue;
            }
            if matches!(step.instruction, Instruction::Cmd(_)) {
                cmd_set = true;
            }
            let extra = self.content_key(step, &state, &args)?;
            let arg_list: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            key = sha(&[&key, &step.text, &arg_list.join("\n"), &extra]);
            if let Some(s) = self.cache_get(&key) {
                state = s;
                self.cached += 1;
                self.event(Event::Cached);
                continue;
            }
            self.execute(step, &mut state, &args, cmd_set)?;
            self.cache_put(&key, &state);
        }
        self.done[i] = Some((state, key));
        Ok(())
    }

    /// What a COPY/ADD's cache key adds: the content it copies.
    fn content_key(
        &self,
        step: &Step,
        state: &ImageState,
        args: &BTreeMap<String, String>,
    ) -> Result<String, BuildError> {
        let c = match &step.instruction {
            Instruction::Copy(c) | Instruction::Add(c) => c,
            _ => return Ok(String::new()),
        };
        let mut h = Sha256::new();
        if let Some(from) = &c.from {
            let from = self.expand(step.line, from, &|n| lookup(state, args, n))?;
            match self.stage_index(&from) {
                Some(j) => h.update(self.done[j].as_ref().map_or("", |d| d.1.as_str())),
                None => h.update(self.image(&from)?.1),
            }
            return Ok(format!("{:x}", h.finalize()));
        }
        for s in &c.sources {
            let s = self.expand(step.line, s, &|n| lookup(state, args, n))?;
            let found = self
                .ctx
                .resolve(&s)
                .map_err(|e| self.err(step.line, crate::error::chain(&e)))?;
            for rel in found {
                self.ctx.hash_into(&rel, &mut h)?;
            }
        }
        Ok(format!("{:x}", h.finalize()))
    }

    fn cache_path(&self, key: &str) -> PathBuf {
        self.store
            .root()
            .join(CACHE_DIR)
            .join(format!("{key}.json"))
    }

    fn cache_get(&self, key: &str) -> Option<ImageState> {
        if self.opts.no_cache {
            return None;
        }
        let data = fs::read(self.cache_path(key)).ok()?;
        let s: ImageState = serde_json::from_slice(&data).ok()?;
        s.layers
            .iter()
            .all(|l| self.store.has_blob(&l.digest))
            .then_some(s)
    }

    fn cache_put(&self, key: &str, state: &ImageState) {
        let path = self.cache_path(key);
        let _ = fs::create_dir_all(path.parent().unwrap_or(Path::new(".")));
        let tmp = self.store.temp_path("cache");
        if fs::write(&tmp, serde_json::to_vec(state).unwrap_or_default()).is_ok() {
            let _ = fs::rename(&tmp, &path);
        }
    }

    fn shell(state: &ImageState) -> Vec<String> {
        state
            .get_list("Shell")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn argv(state: &ImageState, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = Self::shell(state);
                v.push(s.clone());
                v
            }
        }
    }

    fn execute(
        &mut self,
        step: &Step,
        state: &mut ImageState,
        args: &BTreeMap<String, String>,
        cmd_set: bool,
    ) -> Result<(), BuildError> {
        let line = step.line;
        let x = |w: &str, st: &ImageState| self.expand(line, w, &|n| lookup(st, args, n));
        let created_by = step.text.clone();
        match &step.instruction {
            Instruction::From { .. } | Instruction::Arg(_) => {}
            Instruction::Run(c) => {
                let argv = Self::argv(state, c);
                let mut env = state.env();
                for (k, v) in args {
                    if state.env_var(k).is_none() {
                        env.push(format!("{k}={v}"));
                    }
                }
                let start = steps::start(
                    argv,
                    env,
                    state.get_str("WorkingDir"),
                    &state.get_str("User"),
                );
                let warn = |w: &str| (self.events)(Event::Warning(w.to_string()));
                let layer = steps::run(self.store, &self.settings, &state.layers, start, &warn)
                    .map_err(|e| match e {
                        BuildError::RunFailed { .. } => self.err(line, crate::error::chain(&e)),
                        e => e,
                    })?;
                self.ran += 1;
                state.step(&created_by, layer);
            }
            Instruction::Copy(c) | Instruction::Add(c) => {
                let extract = matches!(step.instruction, Instruction::Add(_));
                let layer = self.copy(step, c, state, args, extract)?;
                state.step(&created_by, Some(layer));
            }
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    let k = x(k, state)?;
                    let v = x(v, state)?;
                    state.set_env(&k, &v);
                }
                state.step(&created_by, None);
            }
            Instruction::Label(pairs) => {
                for (k, v) in pairs {
                    let (k, v) = (x(k, state)?, x(v, state)?);
                    state.insert("Labels", &k, json!(v));
                }
                state.step(&created_by, None);
            }
            Instruction::Workdir(w) => {
                let w = x(w, state)?;
                let cur = state.get_str("WorkingDir");
                let dir = Path::new(if cur.is_empty() { "/" } else { &cur }).join(&w);
                let dir = format!("/{}", context::clean(&dir.to_string_lossy()).display());
                state.set("WorkingDir", json!(dir));
                let (dirs, _) = steps::layer_dirs(self.store, &state.layers, false)?;
                let rel = context::clean(&dir);
                let layer = if !rel.as_os_str().is_empty() && steps::lookup(&dirs, &rel).is_none() {
                    let mut w = super::layer::LayerWriter::new(self.store)?;
                    let mut p = PathBuf::new();
                    for c in rel.components() {
                        p.push(c);
                        if steps::lookup(&dirs, &p).is_none() {
                            w.add_dir(&p, 0o755, (0, 0))?;
                        }
                    }
                    Some(w.finish(self.store)?)
                } else {
                    None
                };
                state.step(&created_by, layer);
            }
            Instruction::User(u) => {
                let u = x(u, state)?;
                state.set("User", json!(u));
                state.step(&created_by, None);
            }
            Instruction::Expose(ports) => {
                let words = expand::words(ports, self.df.escape, &|n: &str| lookup(state, args, n))
                    .map_err(|e| self.err(line, e.to_string()))?;
                for p in words {
                    let p = if p.contains('/') {
                        p
                    } else {
                        format!("{p}/tcp")
                    };
                    state.insert("ExposedPorts", &p, json!({}));
                }
                state.step(&created_by, None);
            }
            Instruction::Volume(vols) => {
                for v in vols {
                    let v = x(v, state)?;
                    state.insert("Volumes", &v, json!({}));
                }
                state.step(&created_by, None);
            }
            Instruction::StopSignal(s) => {
                let s = x(s, state)?;
                state.set("StopSignal", json!(s));
                state.step(&created_by, None);
            }
            Instruction::Healthcheck(h) => {
                let v = match h {
                    None => json!({"Test": ["NONE"]}),
                    Some(h) => {
                        let test = match &h.command {
                            Some(Command::Exec(v)) => std::iter::once("CMD".to_string())
                                .chain(v.clone())
                                .collect(),
                            Some(Command::Shell(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
                            None => Vec::new(),
                        };
                        let mut v = json!({ "Test": test });
                        for (field, d) in [
                            ("Interval", &h.interval),
                            ("Timeout", &h.timeout),
                            ("StartPeriod", &h.start_period),
                            ("StartInterval", &h.start_interval),
                        ] {
                            if let Some(d) = d {
                                let ns = duration_ns(d).ok_or_else(|| {
                                    self.err(line, format!("HEALTHCHECK: invalid duration {d:?}: expected e.g. 30s or 1m30s"))
                                })?;
                                v[field] = json!(ns);
                            }
                        }
                        if let Some(r) = &h.retries {
                            let r: u64 = r.parse().map_err(|_| {
                                self.err(
                                    line,
                                    format!("HEALTHCHECK: --retries={r}: expected a number"),
                                )
                            })?;
                            v["Retries"] = json!(r);
                        }
                        v
                    }
                };
                state.set("Healthcheck", v);
                state.step(&created_by, None);
            }
            Instruction::Shell(s) => {
                state.set("Shell", json!(s));
                state.step(&created_by, None);
            }
            Instruction::Cmd(c) => {
                state.set("Cmd", json!(Self::argv(state, c)));
                state.step(&created_by, None);
            }
            Instruction::Entrypoint(c) => {
                state.set("Entrypoint", json!(Self::argv(state, c)));
                if !cmd_set {
                    // An ENTRYPOINT resets the base image's CMD.
                    state.set("Cmd", Value::Null);
                }
                state.step(&created_by, None);
            }
            Instruction::Maintainer(m) => {
                state.config["author"] = json!(m);
                state.step(&created_by, None);
            }
        }
        Ok(())
    }

    fn copy(
        &self,
        step: &Step,
        c: &dockerfile::CopyArgs,
        state: &ImageState,
        args: &BTreeMap<String, String>,
        extract: bool,
    ) -> Result<hull_images::LayerRecord, BuildError> {
        let line = step.line;
        let x = |w: &str| self.expand(line, w, &|n| lookup(state, args, n));
        let (dirs, _) = steps::layer_dirs(self.store, &state.layers, false)?;
        let owner = match &c.chown {
            None => None,
            Some(spec) => {
                let spec = x(spec)?;
                let (u, g) = match spec.split_once(':') {
                    Some((u, g)) => (u.to_string(), Some(g.to_string())),
                    None => (spec.clone(), None),
                };
                let uid = steps::lookup_id(&dirs, "etc/passwd", &u).ok_or_else(|| {
                    self.err(line, format!("--chown={spec}: no user {u:?} in the image"))
                })?;
                let gid = match g {
                    Some(g) => steps::lookup_id(&dirs, "etc/group", &g).ok_or_else(|| {
                        self.err(line, format!("--chown={spec}: no group {g:?} in the image"))
                    })?,
                    None => uid,
                };
                Some((uid, gid))
            }
        };
        let mode = c
            .chmod
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok());
        let cur = state.get_str("WorkingDir");
        let dest_raw = x(&c.dest)?;
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            format!(
                "{}/{}",
                if cur.is_empty() {
                    ""
                } else {
                    cur.trim_end_matches('/')
                },
                dest_raw
            )
        };
        let overrides = Overrides { owner, mode };
        let mut sources_raw = Vec::new();
        for s in &c.sources {
            let s = x(s)?;
            if s.contains("://") {
                return Err(self.err(line, format!("ADD {s}: URLs are not supported (the build has no network): download it into the context")));
            }
            sources_raw.push(s);
        }
        let globbed = sources_raw.iter().any(|s| context::is_glob(s));
        let dest = if globbed && !dest.ends_with('/') {
            format!("{dest}/")
        } else {
            dest
        };
        let resolve = |ctx: &Context| -> Result<Vec<PathBuf>, BuildError> {
            let mut v = Vec::new();
            for s in &sources_raw {
                v.extend(
                    ctx.resolve(s)
                        .map_err(|e| self.err(line, crate::error::chain(&e)))?,
                );
            }
            Ok(v)
        };
        match &c.from {
            None => {
                let sources = resolve(&self.ctx)?;
                let spec = CopySpec {
                    sources,
                    from: Source::Context(&self.ctx),
                    dest,
                    overrides,
                    extract,
                };
                steps::copy(self.store, &dirs, &spec)
            }
            Some(from) => {
                let from = x(from)?;
                let layers = match self.stage_index(&from) {
                    Some(j) => self.done[j]
                        .as_ref()
                        .map(|d| d.0.layers.clone())
                        .unwrap_or_default(),
                    None => self.image(&from)?.0.layers,
                };
                let (from_dirs, _) = steps::layer_dirs(self.store, &layers, false)?;
                let at = self.store.temp_path("build-from");
                let view = MergedView::new(&from_dirs, &at)?;
                let root = Context::plain(&view.root);
                let sources = resolve(&root)?;
                let spec = CopySpec {
                    sources,
                    from: Source::Root(&root),
                    dest,
                    overrides,
                    extract: false,
                };
                let r = steps::copy(self.store, &dirs, &spec);
                drop(view);
                let _ = fs::remove_dir(&at);
                r
            }
        }
    }
}

/// A variable in effect: ENV first, then ARG.
fn lookup(state: &ImageState, args: &BTreeMap<String, String>, name: &str) -> Option<String> {
    state.env_var(name).or_else(|| args.get(name).cloned())
}
