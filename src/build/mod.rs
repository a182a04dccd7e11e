//! `hull build`: a Dockerfile's instructions become an image, each RUN step
//! in a sandbox of its own (see docs/build.md).

pub mod dockerfile;
pub mod expand;
pub mod context;
pub mod layer;
