//! The `hull run` scenario suite (tests/support/scenarios.rs) with
//! `--isolation vm`: each container in its own microVM, through real KVM
//! (directly on hardware KVM, inside tests/kvm-host elsewhere; see
//! tests/support/vmtest.rs).

#[path = "support/scenarios.rs"]
mod scenarios;
#[path = "support/vmtest.rs"]
mod vmtest;

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if std::env::var_os("HULL_IN_KVM_HOST").is_none() && !listing && !skipping {
        // Built here, where cargo is; the emulated host only runs them.
        scenarios::build_runtime();
    }
    if std::env::var_os("HULL_VMM").is_none() {
        // For the trials that use the library (host_dir_root): the hull-vmm
        // beside hull, as the CLI finds it.
        let vmm = scenarios::hull_bin().with_file_name("hull-vmm");
        // SAFETY: still single-threaded: no trial has started.
        unsafe { std::env::set_var("HULL_VMM", vmm) };
    }
    let mut trials = scenarios::trials(scenarios::Backend("vm"));
    trials.extend(scenarios::volume_scenarios::volume_trials(
        scenarios::Backend("vm"),
    ));
    vmtest::run_vm_tests(trials);
}
