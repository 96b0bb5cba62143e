//! `--set-secrets`, `--update-secrets`, `--remove-secrets` and `--clear-secrets`, as gcloud
//! reads them, written into a container and its volumes in the shapes Cloud Run v1 uses:
//! `ENV=SECRET:VERSION` becomes `env: [{name: ENV, valueFrom: {secretKeyRef: {name: SECRET,
//! key: VERSION}}}]`; `/dir/file=SECRET:VERSION` becomes a volume `{name, secret: {secretName:
//! SECRET, items: [{key: VERSION, path: file}]}}` with a `volumeMounts` entry at `/dir` (one
//! secret per directory, as Cloud Run mounts them).

use anyhow::{anyhow, bail, Result};
use skiff_model::{
    Container, EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume,
    VolumeMount,
};
use std::collections::BTreeMap;

/// The secret flags given; `None`/empty when not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretFlags {
    /// `--set-secrets`: replaces every secret reference.
    pub set: Option<Vec<(String, String, String)>>,
    /// `--update-secrets`: adds or changes these.
    pub update: Vec<(String, String, String)>,
    /// `--remove-secrets`: env names or file paths.
    pub remove: Vec<String>,
    /// `--clear-secrets`.
    pub clear: bool,
}

impl SecretFlags {
    /// Reads the flags' values; errors name the flag and the entry.
    pub fn parse(
        set: Option<&str>,
        update: Option<&str>,
        remove: Option<&str>,
        clear: bool,
    ) -> Result<Self> {
        Ok(SecretFlags {
            set: set.map(|s| parse_list("--set-secrets", s)).transpose()?,
            update: update
                .map(|s| parse_list("--update-secrets", s))
                .transpose()?
                .unwrap_or_default(),
            remove: remove
                .map(crate::deploy::split_list)
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            clear,
        })
    }

    pub fn given(&self) -> bool {
        self.set.is_some() || !self.update.is_empty() || !self.remove.is_empty() || self.clear
    }
}

/// `TARGET=SECRET:VERSION,...` → `(target, secret, version)`.
fn parse_list(flag: &str, s: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for item in crate::deploy::split_list(s) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let bad = || {
            anyhow!(
                "invalid {flag} entry {item:?}: use ENV=SECRET:VERSION or /path/file=SECRET:VERSION (VERSION: latest or a number)"
            )
        };
        let (target, reference) = item.split_once('=').ok_or_else(bad)?;
        let (secret, version) = reference.split_once(':').ok_or_else(bad)?;
        if target.is_empty() || secret.is_empty() || version.is_empty() {
            return Err(bad());
        }
        if target.starts_with('/') {
            let (dir, file) = target.rsplit_once('/').unwrap_or_default();
            if dir.is_empty() || file.is_empty() {
                bail!("invalid {flag} entry {item:?}: give a file in a directory, like /secrets/{secret}");
            }
        }
        out.push((target.to_string(), secret.to_string(), version.to_string()));
    }
    Ok(out)
}

/// The secret references a container has now: target (env name or file path) → (secret,
/// version).
fn current(c: &Container, volumes: &[Volume]) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for e in &c.env {
        if let Some(r) = e
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
        {
            out.insert(e.name.clone(), (r.name.clone(), r.key.clone()));
        }
    }
    for m in &c.volume_mounts {
        let Some(s) = volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.secret.as_ref())
        else {
            continue;
        };
        if s.items.is_empty() {
            out.insert(
                format!("{}/{}", m.mount_path, s.secret_name),
                (s.secret_name.clone(), "latest".into()),
            );
        }
        for it in &s.items {
            out.insert(
                format!("{}/{}", m.mount_path, it.path),
                (s.secret_name.clone(), it.key.clone()),
            );
        }
    }
    out
}

/// Applies the flags to a container and the volumes beside it. Nothing changes when no
/// secret flag was given.
pub fn apply(c: &mut Container, volumes: &mut Vec<Volume>, f: &SecretFlags) -> Result<()> {
    if !f.given() {
        return Ok(());
    }
    let mut refs = if f.clear || f.set.is_some() {
        BTreeMap::new()
    } else {
        current(c, volumes)
    };
    for t in &f.remove {
        refs.remove(t);
    }
    for (t, s, v) in f.set.iter().flatten().chain(&f.update) {
        refs.insert(t.clone(), (s.clone(), v.clone()));
    }
    // Take every secret reference out, then write the wanted ones back.
    let secret_volumes: Vec<String> = volumes
        .iter()
        .filter(|v| v.secret.is_some())
        .map(|v| v.name.clone())
        .collect();
    volumes.retain(|v| v.secret.is_none());
    c.volume_mounts
        .retain(|m| !secret_volumes.contains(&m.name));
    let mut env_at: Vec<(usize, EnvVar)> = Vec::new();
    let mut kept = Vec::new();
    for (i, e) in std::mem::take(&mut c.env).into_iter().enumerate() {
        if e.value_from.is_some() {
            env_at.push((i, e));
        } else {
            kept.push(e);
        }
    }
    c.env = kept;
    let mut dirs: BTreeMap<String, (String, Vec<KeyToPath>)> = BTreeMap::new();
    for (target, (secret, version)) in &refs {
        if !target.starts_with('/') {
            if c.env.iter().any(|e| e.name == *target) {
                bail!("{target} is an environment variable already: remove it with --remove-env-vars {target} to make it a secret");
            }
            c.env.push(EnvVar {
                name: target.clone(),
                value: String::new(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: version.clone(),
                    }),
                }),
            });
            continue;
        }
        let (dir, file) = target.rsplit_once('/').unwrap_or_default();
        let entry = dirs
            .entry(dir.to_string())
            .or_insert_with(|| (secret.clone(), Vec::new()));
        if entry.0 != *secret {
            bail!(
                "{dir}: files of secrets {} and {secret} are in the same directory: Cloud Run mounts one secret per directory; use another directory",
                entry.0
            );
        }
        entry.1.push(KeyToPath {
            key: version.clone(),
            path: file.to_string(),
        });
    }
    let mut n = 0;
    for (dir, (secret, items)) in dirs {
        let name = loop {
            n += 1;
            let name = format!("secret-{n}");
            if !volumes.iter().any(|v| v.name == name) {
                break name;
            }
        };
        volumes.push(Volume {
            name: name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: secret,
                items,
            }),
            ..Default::default()
        });
        c.volume_mounts.push(VolumeMount {
            name,
            mount_path: dir,
            read_only: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(set: Option<&str>, update: Option<&str>, remove: Option<&str>) -> SecretFlags {
        SecretFlags::parse(set, update, remove, false).unwrap()
    }

    #[test]
    fn set_update_remove() {
        let mut c = Container::default();
        c.env.push(EnvVar {
            name: "PLAIN".into(),
            value: "1".into(),
            value_from: None,
        });
        let mut vols = Vec::new();
        apply(
            &mut c,
            &mut vols,
            &flags(
                Some("PW=db:2,/etc/app/key=tok:latest,/etc/app/old=tok:1"),
                None,
                None,
            ),
        )
        .unwrap();
        let json = serde_json::to_value((&c, &vols)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"image": "", "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "2"}}}],
                 "volumeMounts": [{"name": "secret-1", "mountPath": "/etc/app"}]},
                [{"name": "secret-1", "secret": {"secretName": "tok", "items": [
                    {"key": "latest", "path": "key"}, {"key": "1", "path": "old"}]}}]
            ])
        );
        apply(
            &mut c,
            &mut vols,
            &flags(None, Some("PW=db:3"), Some("/etc/app/old")),
        )
        .unwrap();
        assert_eq!(current(&c, &vols).len(), 2);
        assert_eq!(
            current(&c, &vols)["PW"],
            ("db".to_string(), "3".to_string())
        );
        apply(
            &mut c,
            &mut vols,
            &SecretFlags::parse(None, None, None, true).unwrap(),
        )
        .unwrap();
        assert!(current(&c, &vols).is_empty());
        assert!(vols.is_empty() && c.volume_mounts.is_empty());
        assert_eq!(c.env.len(), 1);
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in ["PW=db", "PW", "=db:1", "/file=db:1", "/dir/=db:1", "PW=db:"] {
            assert!(
                SecretFlags::parse(Some(bad), None, None, false).is_err(),
                "{bad}"
            );
        }
        let mut c = Container::default();
        let e = apply(
            &mut c,
            &mut Vec::new(),
            &flags(Some("/s/a=one:1,/s/b=two:1"), None, None),
        )
        .unwrap_err();
        assert!(e.to_string().contains("one secret per directory"), "{e}");
    }
}
