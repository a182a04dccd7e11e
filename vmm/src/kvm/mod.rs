//! KVM: the VM, its memory and its vCPUs.

mod detect;
pub mod memory;
pub mod pause;
pub mod vcpu;
pub mod vm;

pub use detect::{KvmKind, detect_kvm_kind};
