//! hull as a library: the container lifecycle that every front end (the
//! `hull` CLI today; an OCI runtime and `hull build` next) drives with the
//! same calls. A front end translates its own arguments into a
//! [`ContainerConfig`] and calls [`Container`]'s methods; the modules below
//! are the parts those methods are made of.

pub mod admission;
pub mod bench;
pub mod build;
pub mod bundle;
pub mod cgroups;
pub mod client;
pub mod container;
pub mod error;
pub mod image;
pub mod initramfs;
pub mod monitor;
pub mod network;
pub mod paths;
pub mod process;
pub mod pty;
pub mod sandbox;
pub mod state;
pub mod sys;
pub mod trace;
pub mod userns;
pub mod volume;

pub use container::{Container, ContainerConfig, ContainerError};
pub use sandbox::Isolation;

/// Exit status for hull's own errors, as docker uses.
pub const EXIT_HULL_ERROR: i32 = 125;
