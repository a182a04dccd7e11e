//! virtio-fs (virtio 1.2, 5.11): a host directory the guest mounts with
//! `mount -t virtiofs TAG DIR`, served by a passthrough FUSE server inside
//! hull-vmm ([`server`]), on a device thread of its own (its requests block
//! on the host's disk; the shared device loop never waits for them).
//!
//! Two queues: hiprio (FORGET, BATCH_FORGET) and one request queue.
//! Snapshots: a VM with a shared directory is not snapshotted (the server's
//! table of open host files is not something a snapshot can carry);
//! `VmConfig::validate` refuses the combination. A template's empty fs
//! slots are (`VmConfig::fs_slots`): a restore gives each slot a directory
//! and a fresh server, which the guest, which never mounted the slot,
//! first meets with FUSE_INIT.

pub mod dax;
pub mod device;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod sys;

pub use device::{Fs, FsError, FsState};

use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Longest tag (virtio_fs_config.tag).
pub const TAG_MAX: usize = 36;

/// A /proc/self/fd directory opened for the servers before the jail took
/// /proc away (see crate::jail); without one they open their own.
static PROC_SELF_FD: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Gives the servers created later this /proc/self/fd directory.
pub fn set_proc_self_fd(fd: OwnedFd) {
    *PROC_SELF_FD.lock().unwrap_or_else(|p| p.into_inner()) = Some(fd);
}

/// A duplicate of the directory set with [`set_proc_self_fd`], if any.
fn proc_self_fd() -> Option<OwnedFd> {
    PROC_SELF_FD
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|fd| fd.try_clone().ok())
}

#[cfg(test)]
mod tests;
