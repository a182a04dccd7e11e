//! Where hull finds its parts: the guest kernel, `hull-vmm`, the static
//! `hull-agent`, and host tools. Each can be overridden by an environment
//! variable (`HULL_KERNEL`, `HULL_VMM`, `HULL_AGENT`).

use std::path::{Path, PathBuf};

/// The triple the static agent is built for (see agent/build-static.sh).
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// hull's cache directory: `$XDG_CACHE_HOME/hull` or `$HOME/.cache/hull`.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("hull"))
}

/// The guest kernel: `$HULL_KERNEL`, else the newest build of guest-kernel/build.sh.
/// The path is returned whether or not the file exists.
pub fn kernel() -> Option<PathBuf> {
    env_path("HULL_KERNEL").or_else(|| Some(cache_dir()?.join("kernel").join("vmlinux")))
}

/// The guest kernel the user chose (`$HULL_KERNEL`), if any.
pub fn chosen_kernel() -> Option<PathBuf> {
    env_path("HULL_KERNEL")
}

/// `hull-vmm`: `$HULL_VMM`, else beside the running `hull`, else on PATH.
pub fn vmm_binary() -> Option<PathBuf> {
    env_path("HULL_VMM")
        .or_else(|| beside_exe("hull-vmm"))
        .or_else(|| find_in_path("hull-vmm"))
}

/// The static `hull-agent`: `$HULL_AGENT`, else where agent/build-static.sh puts it
/// relative to the running `hull` (`target/<triple>/release/`), else beside `hull`.
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = env_path("HULL_AGENT") {
        return Some(p);
    }
    let exe = std::env::current_exe().ok()?;
    // target/{debug,release}/hull (or target/{debug,release}/deps/test-binary).
    let target_dir = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "target"))?
        .to_path_buf();
    let built = target_dir
        .join(AGENT_TARGET)
        .join("release")
        .join("hull-agent");
    if built.is_file() {
        return Some(built);
    }
    beside_exe("hull-agent")
}

/// Finds an executable named `name` on PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn beside_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    is_executable(&p).then_some(p)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_on_path_and_not_nonsense() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-tool-hull-test").is_none());
    }
}
