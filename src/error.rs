//! Rendering errors for people: the library's errors each say what failed
//! and expose their cause as `source` (never in their own message too), so
//! the whole story is the chain, joined as `anyhow`'s `{:#}` joins it.

pub use hull_vmm::error::chain;

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
}
