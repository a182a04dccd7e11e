//! `hull build`: a Dockerfile's instructions become an image, each RUN step
//! in a sandbox of its own over the image so far (see docs/build.md).

mod builder;
pub mod context;
pub mod dockerfile;
pub mod expand;
pub mod image;
pub mod layer;
pub mod steps;
pub mod upper_tar;

use std::path::PathBuf;

pub use builder::build;

use crate::Isolation;
use crate::error::PathIoError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// A step that cannot be carried out: where, and why.
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(transparent)]
    Context(#[from] context::ContextError),
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    UpperTar(#[from] upper_tar::UpperTarError),
    #[error(transparent)]
    Store(#[from] hull_images::store::StoreError),
    #[error(transparent)]
    Prepare(#[from] hull_images::layers::LayerError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error("running the step")]
    Container(#[from] crate::ContainerError),
    #[error("RUN {command}: exited with status {status}{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    RunFailed {
        command: String,
        status: i32,
        reason: Option<String>,
    },
    #[error("{what}: {why}")]
    Tool { what: String, why: String },
    #[error("mounting a stage's layers: {0}")]
    Mount(String),
    #[error("target stage {0:?} is not in the Dockerfile")]
    NoTarget(String),
    #[error(transparent)]
    Tag(#[from] hull_images::reference::ReferenceError),
}

/// What `hull build` was asked for.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    pub dockerfile: Option<PathBuf>,
    pub tags: Vec<String>,
    /// `--build-arg K=V`.
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    pub no_cache: bool,
    pub isolation: Isolation,
    /// Where RUN steps' containers are recorded while they run.
    pub state_dir: PathBuf,
    pub kernel: Option<PathBuf>,
}

/// What the build tells its caller as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Step `n` of `total` starts (`stage` is its stage's name or index).
    Step {
        n: usize,
        total: usize,
        stage: String,
        text: String,
    },
    /// That step's result came from the layer cache.
    Cached,
    Warning(String),
}

/// See [`crate::error::io_at`].
fn io_at(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BuildError {
    crate::error::io_at(what, path)
}

/// How the build ended.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image id (its config's digest).
    pub id: hull_images::Digest,
    pub steps: usize,
    pub cached: usize,
    /// RUN steps that ran.
    pub ran: usize,
}
