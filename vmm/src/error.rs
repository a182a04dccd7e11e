//! Errors for people: each of the workspace's errors says what failed and
//! shows its cause either in its message or as its `source`, never both, so
//! the whole story is the chain joined as `anyhow`'s `{:#}` joins it. hull
//! (`hull::error::chain`) renders its errors with this one too.

use std::error::Error;

/// `error: cause: cause's cause`, as one line (for a thread or a test that
/// can only report a message).
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening the disk")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_follows_once() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            chain(&e),
            "opening the disk: No such file or directory (os error 2)"
        );
    }
}
