//! Per-registry settings and credentials.
//!
//! Skiff's own settings live in `DATA/registries.json` (mode 0600), written by
//! `skiff registries login HOST`: `{"HOST[:PORT]": {"username", "password", "insecure",
//! "caFile"}}`. Credentials not given there are looked up, in the order podman and skopeo
//! use, in `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` and `~/.docker/config.json`
//! of the server's user: the `{"auths": {"HOST": {"auth": base64("USER:PASSWORD")}}}` format
//! all of these tools share. Credential helpers (`credsStore`, `credHelpers`) are not run.
//!
//! The auth files are a few lines of JSON read with serde; no crate reads the containers
//! variants of them, and the Docker-only crates would not cover the lookup order above.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// What Skiff knows about one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegistrySettings {
    /// User name for basic auth (and for the token request of bearer-token registries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password or access token that goes with `username`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Reach the registry over plain HTTP. Loopback registries always are, as Docker does.
    pub insecure: bool,
    /// A PEM file of CA certificates to trust for this registry, beside the built-in roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// A user name and password for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// `DATA/registries.json`: Skiff's per-registry settings, read on every pull.
#[derive(Debug)]
pub struct Registries {
    path: PathBuf,
    write: Mutex<()>,
}

impl Registries {
    /// The settings file at `path` (it need not exist yet).
    pub fn open(path: &Path) -> Registries {
        Registries {
            path: path.to_path_buf(),
            write: Mutex::new(()),
        }
    }

    /// Every registry's settings, keyed by `HOST[:PORT]`. A missing file is empty.
    pub fn load(&self) -> Result<BTreeMap<String, RegistrySettings>, RegistryError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => {
                return Err(RegistryError::io(
                    format!("cannot read {}", self.path.display()),
                    e,
                ))
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Config {
            path: self.path.display().to_string(),
            reason: format!("not valid registry settings ({e}); fix or delete the file"),
        })
    }

    /// Store `settings` for `host` (validated with [`check_host`]), replacing what was there.
    pub fn set(&self, host: &str, settings: RegistrySettings) -> Result<(), RegistryError> {
        check_host(host)?;
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.load()?;
        all.insert(host.to_string(), settings);
        self.save(&all)
    }

    /// Forget `host`; false when it had no settings.
    pub fn remove(&self, host: &str) -> Result<bool, RegistryError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = self.load()?;
        if all.remove(host).is_none() {
            return Ok(false);
        }
        self.save(&all)?;
        Ok(true)
    }

    fn save(&self, all: &BTreeMap<String, RegistrySettings>) -> Result<(), RegistryError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        let io = |e| RegistryError::io(format!("cannot write {}", self.path.display()), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        let bytes = serde_json::to_vec_pretty(all).expect("settings serialize");
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    /// The settings for `registry` (`HOST[:PORT]`), with credentials from the auth files
    /// when Skiff has none of its own.
    pub fn settings_for(&self, registry: &str) -> Result<RegistrySettings, RegistryError> {
        let mut s = self.load()?.remove(registry).unwrap_or_default();
        if s.username.is_none() {
            if let Some(c) = credentials_from_files(registry)? {
                s.username = Some(c.username);
                s.password = Some(c.password);
            }
        }
        Ok(s)
    }
}

/// Check a registry host as users type it: `HOST[:PORT]`, no scheme, no path.
pub fn check_host(host: &str) -> Result<(), RegistryError> {
    let bad = |reason: &str| {
        RegistryError::InvalidReference {
        input: host.to_string(),
        reason: format!("{reason}; give the registry as HOST[:PORT], e.g. registry.example.com or 127.0.0.1:5000"),
    }
    };
    if host.is_empty() {
        return Err(bad("the registry host is empty"));
    }
    if host.contains("://") || host.contains('/') {
        return Err(bad("a registry host has no scheme and no path"));
    }
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':');
    if name.is_empty() || !name.chars().all(ok) {
        return Err(bad("the host name has characters a host name cannot have"));
    }
    Ok(())
}

/// The auth files podman, skopeo and docker write, in the order they are consulted.
fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut out = Vec::new();
    if let Some(p) = env("REGISTRY_AUTH_FILE") {
        out.push(p);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        out.push(d.join("containers/auth.json"));
    }
    let home = env("HOME");
    if let Some(h) = &home {
        out.push(h.join(".config/containers/auth.json"));
    }
    if let Some(d) = env("DOCKER_CONFIG") {
        out.push(d.join("config.json"));
    }
    if let Some(h) = &home {
        out.push(h.join(".docker/config.json"));
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthFile {
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// `https://host/v1/` and `host` name the same registry in these files.
fn auth_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `registry` from the first auth file that has an entry for it.
pub fn credentials_from_files(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    lookup_in(&auth_files(), registry)
}

fn lookup_in(files: &[PathBuf], registry: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(_) => continue,
        };
        let file: AuthFile = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Config {
            path: path.display().to_string(),
            reason: format!("not a valid auth file ({e})"),
        })?;
        for (key, entry) in file.auths {
            if auth_key(&key) != registry {
                continue;
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                return Ok(Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }));
            }
            if let Some(a) = entry.auth.filter(|a| !a.is_empty()) {
                return decode_auth(&a)
                    .map(Some)
                    .ok_or_else(|| RegistryError::Config {
                        path: path.display().to_string(),
                        reason: format!("the \"auth\" of {key:?} is not base64 of USER:PASSWORD"),
                    });
            }
        }
    }
    Ok(None)
}

fn decode_auth(a: &str) -> Option<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(a.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "registry.example.com",
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
        ] {
            check_host(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "http://x", "x/y", "x:port", "x:99999", "a b"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_keys_and_decoding() {
        assert_eq!(auth_key("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(auth_key("127.0.0.1:5000"), "127.0.0.1:5000");
        let c = decode_auth("dXNlcjpwYTpzcw==").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert!(decode_auth("!!").is_none());
    }

    #[test]
    fn auth_files_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("auth.json");
        let b = tmp.path().join("config.json");
        std::fs::write(&a, r#"{"auths": {"other.example": {"auth": "eDp5"}}}"#).unwrap();
        std::fs::write(
            &b,
            r#"{"auths": {"https://reg.example:5000/v1/": {"auth": "dTpw"}, "other.example": {"auth": "bm86bm8="}}, "credsStore": "desktop"}"#,
        )
        .unwrap();
        let files = [tmp.path().join("missing.json"), a.clone(), b.clone()];
        let c = lookup_in(&files, "reg.example:5000").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
        // The first file with an entry wins.
        let c = lookup_in(&files, "other.example").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("x", "y"));
        assert_eq!(lookup_in(&files, "none.example").unwrap(), None);
        std::fs::write(&a, "{not json").unwrap();
        let e = lookup_in(&files, "x").unwrap_err().to_string();
        assert!(
            e.contains("auth.json") && e.contains("not a valid auth file"),
            "{e}"
        );
    }

    #[test]
    fn settings_round_trip_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let r = Registries::open(&tmp.path().join("registries.json"));
        assert!(r.load().unwrap().is_empty());
        let s = RegistrySettings {
            username: Some("u".into()),
            password: Some("p".into()),
            insecure: true,
            ca_file: None,
        };
        r.set("127.0.0.1:5000", s.clone()).unwrap();
        assert_eq!(r.settings_for("127.0.0.1:5000").unwrap(), s);
        let mode = std::fs::metadata(tmp.path().join("registries.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(r.remove("127.0.0.1:5000").unwrap());
        assert!(!r.remove("127.0.0.1:5000").unwrap());
        assert!(r.set("http://bad", RegistrySettings::default()).is_err());
    }
}
