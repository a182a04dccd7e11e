//! hull's virtual machine monitor.
//!
//! One `hull-vmm` process runs one microVM. The crate is split the way
//! Firecracker and rust-vmm's reference VMM are:
//! - [`kvm`]: VM, vCPU and memory ioctls (most of the `unsafe` lives here);
//! - [`arch`]: the x86_64 memory layout and boot protocol;
//! - [`devices`]: a bus of MMIO/PIO devices, legacy devices and virtio.

// Firecracker's rule: a cast that may truncate says why it cannot, or
// converts with try_from. The devices' casts (32 of them, in devices/ and device_manager.rs) are not reviewed
// yet; everything else in the crate is.
#![warn(clippy::cast_possible_truncation)]

pub mod arch;
mod builder;
pub mod config;
#[allow(clippy::cast_possible_truncation)]
pub mod device_manager;
#[allow(clippy::cast_possible_truncation)]
pub mod devices;
pub mod error;
pub mod jail;
pub mod kvm;
mod restore;
pub mod seccomp;
pub mod snapshot;
pub mod thread;
pub mod vmm;

/// Why a VM ended, as the vCPUs and devices report it to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset itself (reboot): the normal end of a hull guest.
    Reset,
    /// Something went wrong; the message says what. A VMM thread that
    /// panicked reports itself this way too (see [`thread::spawn_named`]).
    Error(String),
    /// A vCPU paused for a snapshot and handed over its state.
    Paused,
}
