//! Resolving `USER[:GROUP]` against a root filesystem's /etc/passwd and
//! /etc/group, as container runtimes do: names or numbers; numbers work
//! without the files.

use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

/// The identity a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `user` and `group` with the passwd and group files under `root`.
pub fn resolve(root: &Path, user: &str, group: Option<&str>) -> Result<Identity, UserError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_in(&passwd, &groups, user, group)
}

/// [`resolve`] on the files' contents.
pub fn resolve_in(
    passwd: &str,
    group_file: &str,
    user: &str,
    group: Option<&str>,
) -> Result<Identity, UserError> {
    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 6)
        .find(|f| f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user));
    let (uid, mut gid, name, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse()
                .map_err(|_| UserError::UnknownUser(user.into()))?,
            f[3].parse()
                .map_err(|_| UserError::UnknownUser(user.into()))?,
            Some(f[0].to_string()),
            f[5].to_string(),
        ),
        (None, Ok(n)) => (n, n, None, "/".to_string()),
        (None, Err(_)) => return Err(UserError::UnknownUser(user.into())),
    };
    let group_entries: Vec<Vec<&str>> = group_file
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    if let Some(g) = group {
        gid = match group_entries.iter().find(|f| f[0] == g) {
            Some(f) => f[2]
                .parse()
                .map_err(|_| UserError::UnknownGroup(g.into()))?,
            None => g.parse().map_err(|_| UserError::UnknownGroup(g.into()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for f in &group_entries {
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if !groups.contains(&g) {
                        groups.push(g);
                    }
                }
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nextra:x:2000:user,other\nwheel:x:10:root\n";

    #[test]
    fn names_numbers_groups() {
        let u = resolve_in(PASSWD, GROUP, "user", None).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.clone()),
            (1000, 1000, vec![1000, 2000])
        );
        assert_eq!(u.home, "/home/user");
        let u = resolve_in(PASSWD, GROUP, "1000", Some("extra")).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 2000));
        let u = resolve_in(PASSWD, GROUP, "4242", Some("4343")).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4343, "/"));
        let r = resolve_in(PASSWD, GROUP, "", None).unwrap();
        assert_eq!((r.uid, r.groups.clone()), (0, vec![0, 10]));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve_in(PASSWD, GROUP, "nobody", None),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve_in(PASSWD, GROUP, "user", Some("nogroup")),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }
}
