//! Resolves an image's `User` (`name`, `uid`, `uid:gid`, `name:group`) against the container's
//! own `/etc/passwd` and `/etc/group`, as Docker does: a numeric id needs no entry, a name does.

use crate::RuntimeError;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

fn read_db(rootfs: &Path, file: &str) -> Vec<Vec<String>> {
    // Paths inside the rootfs are read through the mounted overlay; a symlinked /etc/passwd is
    // followed inside the host view, so refuse anything that is not a regular file.
    let etc = rootfs.join("etc");
    let path = etc.join(file);
    let real_dir = std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir());
    match std::fs::symlink_metadata(&path) {
        Ok(m) if real_dir && m.is_file() => {}
        _ => return Vec::new(),
    }
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(String::from).collect())
        .collect()
}

pub fn resolve(rootfs: &Path, user: Option<&str>) -> Result<ResolvedUser, RuntimeError> {
    let spec = user.map(str::trim).filter(|u| !u.is_empty());
    let Some(spec) = spec else {
        return Ok(ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
        });
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(rootfs, "passwd");
    let (uid, primary_gid, name) = if let Ok(uid) = u.parse::<u32>() {
        let entry = passwd
            .iter()
            .find(|e| e.get(2).map(String::as_str) == Some(u));
        let gid = entry.and_then(|e| e.get(3)?.parse().ok()).unwrap_or(0);
        (uid, gid, entry.and_then(|e| e.first().cloned()))
    } else {
        let entry = passwd
            .iter()
            .find(|e| e.first().map(String::as_str) == Some(u))
            .ok_or_else(|| {
                RuntimeError::Config(format!(
                    "image user {u:?} is not in the image's /etc/passwd"
                ))
            })?;
        let uid = entry.get(2).and_then(|v| v.parse().ok()).ok_or_else(|| {
            RuntimeError::Config(format!("image user {u:?} has an invalid /etc/passwd entry"))
        })?;
        let gid = entry.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
        (uid, gid, Some(u.to_string()))
    };
    let groups = read_db(rootfs, "group");
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.first().map(String::as_str) == Some(g))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| {
                    RuntimeError::Config(format!(
                        "image group {g:?} is not in the image's /etc/group"
                    ))
                })?,
        },
    };
    let additional_gids = match (&name, g) {
        (Some(name), None) => groups
            .iter()
            .filter(|e| e.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
            .filter_map(|e| e.get(2)?.parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => vec![],
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nextra:x:50:www\n",
        )
        .unwrap();
        let check = |spec: Option<&str>, want: Option<(u32, u32, Vec<u32>)>| {
            let got = resolve(root.path(), spec)
                .ok()
                .map(|r| (r.uid, r.gid, r.additional_gids));
            assert_eq!(got, want, "{spec:?}");
        };
        check(None, Some((0, 0, vec![])));
        check(Some(""), Some((0, 0, vec![])));
        check(Some("www"), Some((33, 33, vec![50])));
        check(Some("33"), Some((33, 33, vec![50])));
        check(Some("1000"), Some((1000, 0, vec![])));
        check(Some("1000:1000"), Some((1000, 1000, vec![])));
        check(Some("www:extra"), Some((33, 50, vec![])));
        check(Some("nobody"), None);
        check(Some("www:nogroup"), None);
    }
}
