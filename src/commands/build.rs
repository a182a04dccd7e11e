//! `hull build`: translates its flags into [`hull::build::BuildOptions`]
//! and shows the build's progress.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use hull::Isolation;
use hull::build::{self, BuildOptions, Event};

/// How steps are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// One line per step, and each step's output as it comes.
    Plain,
    /// The same, for a terminal (no redrawing yet).
    Tty,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name the image (NAME[:TAG]); may be given several times.
    #[arg(short, long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// A build argument (KEY=VALUE, or KEY to take it from here).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Build this stage (its AS name) and what it needs, not the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Run every step, ignoring the layer cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Where RUN steps run.
    #[arg(long, value_enum, default_value = "vm")]
    pub isolation: Isolation,
    /// Output style.
    #[arg(long, value_enum, default_value = "plain")]
    pub progress: ProgressMode,
    /// Guest kernel for RUN steps (vm).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Print only the image id.
    #[arg(short, long)]
    pub quiet: bool,
    /// The build context directory.
    pub context: PathBuf,
}

/// Exit status of a failed build, as docker's.
const EXIT_BUILD_FAILED: i32 = 1;

pub fn run(state_dir: &Path, data_dir: &Path, args: BuildArgs) -> anyhow::Result<i32> {
    hull::client::block_signals();
    let mut build_args = Vec::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.push((a.clone(), v));
                }
            }
        }
    }
    let opts = BuildOptions {
        context: args.context.clone(),
        dockerfile: args.file.clone(),
        tags: args.tags.clone(),
        build_args,
        target: args.target.clone(),
        no_cache: args.no_cache,
        isolation: args.isolation,
        state_dir: state_dir.to_path_buf(),
        kernel: args.kernel.clone(),
    };
    let store = hull_images::Store::open(data_dir)?;
    let quiet = args.quiet;
    let show = |e: Event| match e {
        Event::Step { n, total, text, .. } if !quiet => eprintln!("[{n}/{total}] {text}"),
        Event::Cached if !quiet => eprintln!(" ---> CACHED"),
        Event::Warning(w) => eprintln!("hull: warning: {w}"),
        _ => {}
    };
    match build::build(&store, &opts, &show) {
        Ok(b) => {
            if !quiet {
                eprintln!(
                    "{} steps: {} cached, {} RUN executed",
                    b.steps, b.cached, b.ran
                );
                for t in &args.tags {
                    eprintln!("tagged {t}");
                }
            }
            println!("{}", b.id);
            Ok(0)
        }
        Err(e) => {
            eprintln!("hull: build failed: {}", hull::error::chain(&e));
            Ok(EXIT_BUILD_FAILED)
        }
    }
}
