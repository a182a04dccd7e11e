//! KVM: the VM, its memory and its vCPUs.
