//! OCI images: references, content store, import, unpack, layer disks.

pub mod config;
pub mod digest;
pub mod export;
pub mod import;
pub mod layers;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod unpack;

pub use digest::Digest;
pub use reference::Reference;
pub use store::{ImageRecord, LayerRecord, Store};
