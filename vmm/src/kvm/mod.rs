//! KVM: the VM, its memory and its vCPUs.

mod detect;

pub use detect::{KvmKind, detect_kvm_kind};
