//! hull-runtime under real engines with hull's default backend, a microVM
//! per container: podman (output, exit status, exec, logs, stop, its
//! network) and dockerd (exit status), in the emulated KVM host where
//! /dev/kvm is not hardware KVM (one host boot for all trials; see
//! tests/support/vmtest.rs). `HULL_SKIP_VM_TESTS=1` reports them ignored.

#[path = "support/engines.rs"]
mod engines;
#[path = "support/runtime_trials.rs"]
mod runtime_trials;
#[path = "support/vmtest.rs"]
mod vmtest;

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if std::env::var_os("HULL_IN_KVM_HOST").is_none() && !listing && !skipping {
        // Built here, where cargo is; the emulated host only runs them.
        runtime_trials::build();
    }
    vmtest::run_vm_tests(runtime_trials::engine_trials("vm"));
}
