//! The build context: a directory, less what `.dockerignore` excludes;
//! COPY and ADD sources resolved in it (globs included), and their content
//! hashed for the layer cache.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::PathIoError;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{0}: no such file or directory in the build context")]
    NotFound(String),
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContextError {
    crate::error::io_at(what, path)
}

/// One `.dockerignore` line: a pattern, `!` to re-include.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: Vec<String>,
    exclude: bool,
}

#[derive(Debug, Clone)]
pub struct Context {
    pub root: PathBuf,
    rules: Vec<Rule>,
}

/// `path` made relative and clean: no leading `/`, no `.`; `..` cannot go
/// above the root (as docker cleans context paths).
pub fn clean(path: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn segments(p: &str) -> Vec<String> {
    clean(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// Matches one path segment against a pattern segment: `*`, `?`, `[...]`
/// (with `^` or `!` to negate, and ranges), `\` escapes, as Go's
/// filepath.Match.
fn match_segment(pat: &[char], name: &[char]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|i| match_segment(&pat[1..], &name[i..])),
        Some('?') => !name.is_empty() && match_segment(&pat[1..], &name[1..]),
        Some('[') => {
            let Some(c) = name.first() else { return false };
            let mut i = 1;
            let negate = matches!(pat.get(1), Some('^' | '!'));
            if negate {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            while i < pat.len() && (first || pat[i] != ']') {
                first = false;
                let lo = pat[i];
                if pat.get(i + 1) == Some(&'-') && pat.get(i + 2).is_some_and(|c| *c != ']') {
                    hit |= lo <= *c && *c <= pat[i + 2];
                    i += 3;
                } else {
                    hit |= lo == *c;
                    i += 1;
                }
            }
            if i >= pat.len() {
                return false; // no closing ]
            }
            hit != negate && match_segment(&pat[i + 1..], &name[1..])
        }
        Some('\\') if pat.len() > 1 => {
            name.first() == Some(&pat[1]) && match_segment(&pat[2..], &name[1..])
        }
        Some(p) => name.first() == Some(p) && match_segment(&pat[1..], &name[1..]),
    }
}

/// Matches a path (segments) against a pattern (segments); `**` matches
/// any number of segments.
fn match_path(pat: &[String], path: &[String]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => (0..=path.len()).any(|i| match_path(&pat[1..], &path[i..])),
        Some(p) => {
            let Some(name) = path.first() else {
                return false;
            };
            let pc: Vec<char> = p.chars().collect();
            let nc: Vec<char> = name.chars().collect();
            match_segment(&pc, &nc) && match_path(&pat[1..], &path[1..])
        }
    }
}

/// Whether `pattern` (a COPY source or a .dockerignore line) has glob
/// characters.
pub fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

impl Context {
    /// The context at `root`, with its `.dockerignore` if it has one.
    pub fn open(root: &Path) -> Result<Context, ContextError> {
        let root = root.canonicalize().map_err(io_at("opening", root))?;
        let ignore = root.join(".dockerignore");
        let text = match fs::read_to_string(&ignore) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_at("reading", &ignore)(e)),
        };
        Ok(Context {
            root,
            rules: parse_ignore(&text),
        })
    }

    /// A directory with nothing ignored (another stage's or an image's root).
    pub fn plain(root: &Path) -> Context {
        Context {
            root: root.to_path_buf(),
            rules: Vec::new(),
        }
    }

    /// Whether `.dockerignore` leaves `rel` out: the last rule that matches
    /// it or a directory above it decides (`!` rules re-include).
    pub fn ignored(&self, rel: &Path) -> bool {
        let segs: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut excluded = false;
        for r in &self.rules {
            if (1..=segs.len()).any(|n| match_path(&r.pattern, &segs[..n])) {
                excluded = r.exclude;
            }
        }
        excluded
    }

    /// The context paths (relative) a COPY source names: the path itself,
    /// or every path its glob matches, sorted. None found is an error.
    pub fn resolve(&self, source: &str) -> Result<Vec<PathBuf>, ContextError> {
        let rel = clean(source);
        let mut found = Vec::new();
        if is_glob(source) {
            let pat = segments(source);
            self.walk(Path::new(""), &mut |p| {
                let segs: Vec<String> = p
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if match_path(&pat, &segs) {
                    found.push(p.to_path_buf());
                }
            })?;
        } else if fs::symlink_metadata(self.root.join(&rel)).is_ok()
            && (rel.as_os_str().is_empty() || !self.ignored(&rel))
        {
            found.push(rel);
        }
        if found.is_empty() {
            return Err(ContextError::NotFound(source.to_string()));
        }
        found.sort();
        Ok(found)
    }

    /// Calls `f` for every path under `rel` that .dockerignore keeps.
    pub fn walk(&self, rel: &Path, f: &mut dyn FnMut(&Path)) -> Result<(), ContextError> {
        let dir = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_at("reading", &dir))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            if self.ignored(&r) {
                continue;
            }
            f(&r);
            if fs::symlink_metadata(self.root.join(&r)).is_ok_and(|m| m.is_dir()) {
                self.walk(&r, f)?;
            }
        }
        Ok(())
    }

    /// Adds what `rel` holds (paths, types, modes, link targets, contents;
    /// not times or owners) to `h`, recursively.
    pub fn hash_into(&self, rel: &Path, h: &mut Sha256) -> Result<(), ContextError> {
        let mut paths = vec![rel.to_path_buf()];
        if fs::symlink_metadata(self.root.join(rel)).is_ok_and(|m| m.is_dir()) {
            self.walk(rel, &mut |p| paths.push(p.to_path_buf()))?;
        }
        for p in paths {
            let full = self.root.join(&p);
            let m = fs::symlink_metadata(&full).map_err(io_at("reading", &full))?;
            h.update(p.as_os_str().as_encoded_bytes());
            h.update(format!("\0{:o}\0{}\0", m.mode(), m.len()).as_bytes());
            if m.file_type().is_symlink() {
                let t = fs::read_link(&full).map_err(io_at("reading", &full))?;
                h.update(t.as_os_str().as_encoded_bytes());
            } else if m.is_file() {
                let mut f = fs::File::open(&full).map_err(io_at("opening", &full))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = f.read(&mut buf).map_err(io_at("reading", &full))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
        Ok(())
    }
}

fn parse_ignore(text: &str) -> Vec<Rule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (exclude, p) = match l.strip_prefix('!') {
                Some(p) => (false, p.trim()),
                None => (true, l),
            };
            Rule {
                pattern: segments(p),
                exclude,
            }
        })
        .filter(|r| !r.pattern.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(ignore: &str) -> Context {
        Context {
            root: PathBuf::from("/"),
            rules: parse_ignore(ignore),
        }
    }

    #[test]
    fn glob_segments() {
        let m = |p: &str, n: &str| {
            match_segment(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("file?.md", "file1.md"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(!m("[ab", "a"));
    }

    #[test]
    fn dockerignore_reference_example() {
        // From the reference: comments, globs, `**`, and an exception.
        let c = ctx("# comment\n*/temp*\n*/*/temp*\ntemp?\n**/*.go\n*.md\n!README.md\n/secret/\n");
        assert!(c.ignored(Path::new("somedir/temporary.txt")));
        assert!(c.ignored(Path::new("somedir/subdir/temporary.txt")));
        assert!(c.ignored(Path::new("tempa")));
        assert!(!c.ignored(Path::new("tempab")));
        assert!(c.ignored(Path::new("a/b/c.go")));
        assert!(c.ignored(Path::new("x.go")));
        assert!(c.ignored(Path::new("notes.md")));
        assert!(!c.ignored(Path::new("README.md")));
        assert!(c.ignored(Path::new("secret/key")));
        assert!(!c.ignored(Path::new("src/main.rs")));
    }

    #[test]
    fn sources_resolve_in_the_context() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("dir/sub")).unwrap();
        for f in ["a.txt", "b.txt", "c.log", "dir/sub/x", "dir/skip.tmp"] {
            fs::write(t.path().join(f), f).unwrap();
        }
        fs::write(t.path().join(".dockerignore"), "*.log\n**/*.tmp\n").unwrap();
        let c = Context::open(t.path()).unwrap();
        assert_eq!(
            c.resolve("*.txt").unwrap(),
            [PathBuf::from("a.txt"), PathBuf::from("b.txt")]
        );
        assert_eq!(c.resolve("../../dir").unwrap(), [PathBuf::from("dir")]);
        assert!(matches!(c.resolve("c.log"), Err(ContextError::NotFound(_))));
        assert!(matches!(c.resolve("*.md"), Err(ContextError::NotFound(_))));
        let hash = |c: &Context| {
            let mut h = Sha256::new();
            c.hash_into(Path::new("dir"), &mut h).unwrap();
            h.finalize()
        };
        let before = hash(&c);
        fs::write(t.path().join("dir/skip.tmp"), "changed").unwrap();
        assert_eq!(hash(&c), before, "an ignored file does not count");
        fs::write(t.path().join("dir/sub/x"), "changed").unwrap();
        assert_ne!(hash(&c), before);
    }
}
