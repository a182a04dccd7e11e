//! The host<->agent protocol, shared by `hull` (host) and `hull-agent` (guest PID 1).
//! Plain data, and how both sides read an overlayfs upper directory: this
//! crate does not depend on the VMM or on images.

pub mod overlay;
pub mod protocol;
pub mod users;
