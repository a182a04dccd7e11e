//! Compiles hull-vmm's seccomp allowlists (src/seccomp_rules.rs) to BPF
//! once, here, instead of at every start of the VMM: the programs land in
//! `$OUT_DIR/seccomp_filters.rs` as constant `&[sock_filter]` slices that
//! `crate::seccomp` includes. A unit test there checks that they are what
//! the same lists compile to at run time.
//!
//! On glibc Linux it also links `hull-vmm` with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR): see the repository's build.rs.

use std::fmt::Write;

#[allow(dead_code)]
#[path = "src/seccomp_rules.rs"]
mod rules;

use rules::ThreadKind;
use seccompiler::SeccompAction;

fn program(name: &str, rules: rules::Rules, otherwise: SeccompAction, out: &mut String) {
    let prog = rules::compile(rules, otherwise)
        .unwrap_or_else(|e| panic!("compiling the {name} seccomp filter: {e}"));
    writeln!(out, "const {name}: &[sock_filter] = &[").unwrap();
    for f in prog {
        writeln!(
            out,
            "    sock_filter {{ code: {:#06x}, jt: {}, jf: {}, k: {:#x} }},",
            f.code, f.jt, f.jf, f.k
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
}

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp_rules.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let mut out = String::new();
    for kind in ThreadKind::ALL {
        let name = kind.name().to_uppercase();
        program(&name, rules::rules(kind), SeccompAction::Trap, &mut out);
    }
    program(
        "WAITER",
        rules::waiter_rules(),
        SeccompAction::KillProcess,
        &mut out,
    );
    let dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let path = std::path::Path::new(&dir).join("seccomp_filters.rs");
    std::fs::write(&path, out).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
