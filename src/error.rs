//! Rendering errors for people: the library's errors each say what failed
//! and expose their cause as `source` (never in their own message too), so
//! the whole story is the chain, joined as `anyhow`'s `{:#}` joins it.

use std::path::{Path, PathBuf};

pub use hull_vmm::error::chain;

/// Doing `what` to `path` failed (`creating /var/lib/hull/x`), with the OS
/// error as its source: the `Io` variant of the library's error enums, one
/// type rather than a variant and a constructor declared in each module.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct PathIoError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: doing `what` to `path` failed, as an error that holds a
/// [`PathIoError`] (each module names its own error in a one-line wrapper,
/// so that `?` knows which).
pub fn io_at<E: From<PathIoError>>(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> E {
    let path = path.to_path_buf();
    move |source| PathIoError { what, path, source }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_in_the_way_reads_once_per_cause() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = crate::state::StateDir::open(&file.join("state")).unwrap_err();
        let line = chain(&e);
        assert!(line.starts_with("creating "), "{line}");
        assert_eq!(line.matches("os error").count(), 1, "{line}");
    }

    /// A module's error made from the shared [`PathIoError`] reads as the
    /// module's own `Io` variant did: what, the path, then the OS error once.
    #[test]
    fn a_path_io_error_reads_what_path_then_its_cause() {
        let e: crate::volume::VolumeError = io_at("removing the volume directory", Path::new("/v"))(
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(
            chain(&e),
            "removing the volume directory /v: Permission denied (os error 13)"
        );
    }
}
