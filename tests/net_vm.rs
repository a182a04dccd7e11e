//! The network scenarios (tests/support/net_scenarios.rs) with
//! `--isolation vm`: each container in its own microVM, its tap behind a
//! veth in the container's namespace, through real KVM (inside
//! tests/kvm-host where /dev/kvm is not hardware KVM; see
//! tests/support/vmtest.rs). Each trial runs in a network namespace of its
//! own inside that host.

#[path = "support/net_scenarios.rs"]
mod net_scenarios;
#[path = "support/vmtest.rs"]
mod vmtest;

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if std::env::var_os("HULL_IN_KVM_HOST").is_none() && !listing && !skipping {
        // Built here, where cargo is; the emulated host only runs them.
        net_scenarios::build_runtime();
    }
    vmtest::run_vm_tests(net_scenarios::trials("vm"));
}
