//! Links `hull` and `hull-runtime` with packed relative relocations
//! (`-z pack-relative-relocs`, DT_RELR) on glibc Linux: the dynamic
//! loader's relocation table shrinks from about 600 KB to 8 KB, so an exec
//! reads about 150 fewer pages before `main` (docs/snapshots.md, "Before
//! main"). The executables stay position-independent (ASLR); they need
//! glibc 2.36 or newer to run. vmm/build.rs does the same for `hull-vmm`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
