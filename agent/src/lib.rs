//! The host<->agent protocol, shared by `hull` (host) and `hull-agent` (guest PID 1).
//! Plain data only: this crate does not depend on the VMM or on images.

pub mod protocol;
pub mod users;
