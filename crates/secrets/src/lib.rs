//! Secrets as Secret Manager keeps them: a secret (`projects/P/secrets/S`) has labels, a
//! create time and numbered versions (1, 2, ...), each `ENABLED`, `DISABLED` or `DESTROYED`;
//! `latest` is the highest enabled version. A version's payload (at most 64 KiB, Secret
//! Manager's limit) is encrypted at rest with AES-256-GCM under a key kept in the data dir
//! (`DATA/secrets.key`, 0600), a fresh random nonce per value, and the version's own name as
//! associated data, so a ciphertext moved to another row does not decrypt.
//!
//! One SQLite database (`DATA/secrets.db`, 0600, WAL) holds the secrets and their versions.
//! Payloads appear only in [`SecretStore::access`]'s answer: never in an error, a log line or
//! a `Debug` output of this crate.

mod crypto;
mod model;

pub use model::{
    AccessResponse, ListSecretsResponse, ListVersionsResponse, Payload, Replication, Secret,
    SecretVersion, VersionState,
};

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Secret Manager's limit on one version's payload: 64 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// What went wrong, in words a user can act on. No variant ever carries a payload.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The secret or version does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// A secret of that name exists already (HTTP 409).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed: a bad name, a payload too large, a checksum mismatch (400).
    #[error("{0}")]
    Invalid(String),
    /// The version exists but is disabled or destroyed (Secret Manager's FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("secrets database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored value does not decrypt with the key in the data dir.
    #[error("{0}")]
    Crypto(String),
}

pub type Result<T> = std::result::Result<T, SecretsError>;

/// Migrations, applied in order; index + 1 is the schema version each one produces
/// (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &["CREATE TABLE secrets (
        namespace TEXT NOT NULL, name TEXT NOT NULL, labels TEXT NOT NULL,
        create_time TEXT NOT NULL,
        PRIMARY KEY (namespace, name));
     CREATE TABLE versions (
        namespace TEXT NOT NULL, secret TEXT NOT NULL, version INTEGER NOT NULL,
        state TEXT NOT NULL, create_time TEXT NOT NULL, destroy_time TEXT,
        checksum INTEGER NOT NULL, nonce BLOB, ciphertext BLOB,
        PRIMARY KEY (namespace, secret, version));"];

/// The secret store. Every call is one short SQLite transaction under a mutex.
pub struct SecretStore {
    conn: Mutex<Connection>,
    key: crypto::Key,
}

/// Which version a reference names: `latest` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    Latest,
    Number(u64),
}

impl VersionRef {
    /// Parses `latest` or a positive number (`1`, `2`, ...), as Secret Manager names versions.
    pub fn parse(s: &str) -> Result<Self> {
        if s == "latest" {
            return Ok(VersionRef::Latest);
        }
        match s.parse::<u64>() {
            Ok(n) if n > 0 && !s.starts_with('+') && !s.starts_with('0') => {
                Ok(VersionRef::Number(n))
            }
            _ => Err(SecretsError::Invalid(format!(
                "invalid secret version {s:?}: use latest or a version number like 1"
            ))),
        }
    }
}

/// Checks a secret id as Secret Manager does: 1 to 255 letters, digits, `-` and `_`.
pub fn validate_secret_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SecretsError::Invalid(format!(
            "invalid secret name {id:?}: use 1 to 255 letters, digits, - and _"
        )))
    }
}

/// Checks labels as Secret Manager does: at most 64; keys 1 to 63 lower-case letters,
/// digits, `-` and `_` starting with a letter; values up to 63 of the same.
fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 64 {
        return Err(SecretsError::Invalid(
            "too many labels: a secret takes at most 64".into(),
        ));
    }
    let chars = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    for (k, v) in labels {
        let key_ok =
            (1..=63).contains(&k.len()) && k.as_bytes()[0].is_ascii_lowercase() && chars(k);
        if !key_ok || v.len() > 63 || !chars(v) {
            return Err(SecretsError::Invalid(format!(
                "invalid label {k}={v}: use lower-case letters, digits, - and _ (keys start with a letter, at most 63 characters each)"
            )));
        }
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn not_found(ns: &str, secret: &str) -> SecretsError {
    SecretsError::NotFound(format!(
        "secret {secret} not found in project {ns}: create it with skiff secrets create {secret} --data-file PATH"
    ))
}

impl SecretStore {
    /// Opens (or creates) the store: the database at `DATA/secrets.db` and the key at
    /// `DATA/secrets.key` (32 random bytes, written once, mode 0600).
    pub fn open(data_dir: &Path) -> Result<Self> {
        let key = crypto::Key::load_or_create(&data_dir.join("secrets.key"))?;
        let path = data_dir.join("secrets.db");
        let conn = Connection::open(&path)?;
        restrict(&path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;",
        )?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!(
                "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))?;
        }
        for suffix in ["-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                restrict(&p)?;
            }
        }
        Ok(SecretStore {
            conn: Mutex::new(conn),
            key,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates secret `id` in project `ns` with no versions. Errors: a bad id or labels,
    /// [`SecretsError::AlreadyExists`].
    pub fn create(&self, ns: &str, id: &str, labels: BTreeMap<String, String>) -> Result<Secret> {
        validate_secret_id(id)?;
        validate_labels(&labels)?;
        let created = now();
        let conn = self.conn();
        let n = conn.execute(
            "INSERT OR IGNORE INTO secrets (namespace, name, labels, create_time) VALUES (?1, ?2, ?3, ?4)",
            params![ns, id, serde_json::to_string(&labels).unwrap_or_default(), created],
        )?;
        if n == 0 {
            return Err(SecretsError::AlreadyExists(format!(
                "secret {id} already exists in project {ns}: add a version with skiff secrets versions add {id} --data-file PATH"
            )));
        }
        Ok(Secret::new(ns, id, labels, created))
    }

    /// The secret `id` of project `ns`.
    pub fn get(&self, ns: &str, id: &str) -> Result<Secret> {
        self.conn()
            .query_row(
                "SELECT labels, create_time FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![ns, id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(labels, created)| {
                Secret::new(
                    ns,
                    id,
                    serde_json::from_str(&labels).unwrap_or_default(),
                    created,
                )
            })
            .ok_or_else(|| not_found(ns, id))
    }

    /// Every secret of project `ns`, by name.
    pub fn list(&self, ns: &str) -> Result<Vec<Secret>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, labels, create_time FROM secrets WHERE namespace = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![ns], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, labels, created) = row?;
            out.push(Secret::new(
                ns,
                &name,
                serde_json::from_str(&labels).unwrap_or_default(),
                created,
            ));
        }
        Ok(out)
    }

    /// Deletes secret `id` and all its versions.
    pub fn delete(&self, ns: &str, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
            params![ns, id],
        )?;
        if n == 0 {
            return Err(not_found(ns, id));
        }
        tx.execute(
            "DELETE FROM versions WHERE namespace = ?1 AND secret = ?2",
            params![ns, id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adds the next version of secret `id` holding `data`, enabled. `crc32c`, when given,
    /// must be the payload's CRC32C (Secret Manager's `dataCrc32c`). Errors: no such secret, a
    /// payload over [`MAX_PAYLOAD_BYTES`] or empty, a checksum mismatch.
    pub fn add_version(
        &self,
        ns: &str,
        id: &str,
        data: &[u8],
        crc32c: Option<u32>,
    ) -> Result<SecretVersion> {
        if data.len() > MAX_PAYLOAD_BYTES {
            return Err(SecretsError::Invalid(format!(
                "the secret's data is {} bytes: a version holds at most {MAX_PAYLOAD_BYTES} bytes (64 KiB)",
                data.len()
            )));
        }
        if data.is_empty() {
            return Err(SecretsError::Invalid(
                "the secret's data is empty: give at least one byte".into(),
            ));
        }
        let sum = crc32c::crc32c(data);
        if crc32c.is_some_and(|c| c != sum) {
            return Err(SecretsError::Invalid(
                "the data's CRC32C does not match dataCrc32c: the payload was corrupted on its way; send it again".into(),
            ));
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![ns, id],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_none() {
            return Err(not_found(ns, id));
        }
        let last: Option<u64> = tx.query_row(
            "SELECT MAX(version) FROM versions WHERE namespace = ?1 AND secret = ?2",
            params![ns, id],
            |r| r.get(0),
        )?;
        let version = last.unwrap_or(0) + 1;
        let (nonce, ciphertext) = self.key.seal(&aad(ns, id, version), data)?;
        let created = now();
        tx.execute(
            "INSERT INTO versions (namespace, secret, version, state, create_time, checksum, nonce, ciphertext)
             VALUES (?1, ?2, ?3, 'ENABLED', ?4, ?5, ?6, ?7)",
            params![ns, id, version, created, sum, nonce, ciphertext],
        )?;
        tx.commit()?;
        Ok(SecretVersion::new(
            ns,
            id,
            version,
            VersionState::Enabled,
            created,
            None,
            crc32c.is_some(),
        ))
    }

    /// Every version of secret `id`, newest first (as Secret Manager lists them).
    pub fn versions(&self, ns: &str, id: &str) -> Result<Vec<SecretVersion>> {
        self.get(ns, id)?;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT version, state, create_time, destroy_time FROM versions
             WHERE namespace = ?1 AND secret = ?2 ORDER BY version DESC",
        )?;
        let rows = stmt.query_map(params![ns, id], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (v, state, created, destroyed) = row?;
            out.push(SecretVersion::new(
                ns,
                id,
                v,
                VersionState::parse(&state),
                created,
                destroyed,
                false,
            ));
        }
        Ok(out)
    }

    /// The version `v` names: a number as it is, `latest` as the highest enabled version.
    fn number(conn: &Connection, ns: &str, id: &str, v: VersionRef) -> Result<u64> {
        match v {
            VersionRef::Number(n) => Ok(n),
            VersionRef::Latest => conn
                .query_row(
                    "SELECT MAX(version) FROM versions WHERE namespace = ?1 AND secret = ?2 AND state = 'ENABLED'",
                    params![ns, id],
                    |r| r.get::<_, Option<u64>>(0),
                )?
                .ok_or_else(|| {
                    SecretsError::FailedPrecondition(format!(
                        "secret {id} has no enabled version for latest: add one with skiff secrets versions add {id} --data-file PATH"
                    ))
                }),
        }
    }

    /// One version's metadata.
    pub fn version(&self, ns: &str, id: &str, v: VersionRef) -> Result<SecretVersion> {
        self.get(ns, id)?;
        let conn = self.conn();
        let n = Self::number(&conn, ns, id, v)?;
        conn.query_row(
            "SELECT state, create_time, destroy_time FROM versions
             WHERE namespace = ?1 AND secret = ?2 AND version = ?3",
            params![ns, id, n],
            |r| {
                Ok(SecretVersion::new(
                    ns,
                    id,
                    n,
                    VersionState::parse(&r.get::<_, String>(0)?),
                    r.get(1)?,
                    r.get(2)?,
                    false,
                ))
            },
        )
        .optional()?
        .ok_or_else(|| version_not_found(ns, id, n))
    }

    /// The payload of an enabled version, and the version's number. Errors: no such secret
    /// or version, [`SecretsError::FailedPrecondition`] for a disabled or destroyed one.
    pub fn access(&self, ns: &str, id: &str, v: VersionRef) -> Result<(u64, Vec<u8>)> {
        self.get(ns, id)?;
        let conn = self.conn();
        let n = Self::number(&conn, ns, id, v)?;
        let row = conn
            .query_row(
                "SELECT state, nonce, ciphertext FROM versions
                 WHERE namespace = ?1 AND secret = ?2 AND version = ?3",
                params![ns, id, n],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<Vec<u8>>>(1)?,
                        r.get::<_, Option<Vec<u8>>>(2)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| version_not_found(ns, id, n))?;
        let state = VersionState::parse(&row.0);
        if state != VersionState::Enabled {
            return Err(SecretsError::FailedPrecondition(format!(
                "version {n} of secret {id} is {}: enable it with skiff secrets versions enable {n} --secret {id}, or use another version",
                state.as_str()
            )));
        }
        let (Some(nonce), Some(ct)) = (row.1, row.2) else {
            return Err(SecretsError::Crypto(format!(
                "version {n} of secret {id} has no stored value"
            )));
        };
        let data = self.key.open(&aad(ns, id, n), &nonce, &ct).map_err(|_| {
            SecretsError::Crypto(format!(
                "version {n} of secret {id} does not decrypt with the key in the data dir (secrets.key): restore the key this store was written with"
            ))
        })?;
        Ok((n, data))
    }

    /// Sets a version's state to enabled or disabled; a destroyed version stays destroyed.
    pub fn set_enabled(&self, ns: &str, id: &str, n: u64, enabled: bool) -> Result<SecretVersion> {
        let current = self.version(ns, id, VersionRef::Number(n))?;
        if current.state == VersionState::Destroyed {
            return Err(SecretsError::FailedPrecondition(format!(
                "version {n} of secret {id} is destroyed: its value is gone and it cannot be enabled or disabled"
            )));
        }
        let state = if enabled {
            VersionState::Enabled
        } else {
            VersionState::Disabled
        };
        self.conn().execute(
            "UPDATE versions SET state = ?4 WHERE namespace = ?1 AND secret = ?2 AND version = ?3",
            params![ns, id, n, state.as_str()],
        )?;
        self.version(ns, id, VersionRef::Number(n))
    }

    /// Destroys a version: its value is erased for good; the version stays, `DESTROYED`.
    pub fn destroy(&self, ns: &str, id: &str, n: u64) -> Result<SecretVersion> {
        self.version(ns, id, VersionRef::Number(n))?;
        self.conn().execute(
            "UPDATE versions SET state = 'DESTROYED', destroy_time = COALESCE(destroy_time, ?4),
                 nonce = NULL, ciphertext = NULL
             WHERE namespace = ?1 AND secret = ?2 AND version = ?3",
            params![ns, id, n, now()],
        )?;
        self.version(ns, id, VersionRef::Number(n))
    }

    /// Checks that a reference can be resolved now: the secret exists and the version (a
    /// number, or `latest`) is enabled. A deploy or job that names one calls this first.
    pub fn check(&self, ns: &str, id: &str, v: VersionRef) -> Result<()> {
        let found = self.version(ns, id, v)?;
        if found.state != VersionState::Enabled {
            return Err(SecretsError::FailedPrecondition(format!(
                "version {} of secret {id} is {}: enable it or use another version",
                found.version,
                found.state.as_str()
            )));
        }
        Ok(())
    }
}

impl SecretStore {
    /// Resolves a revision's or task's secret references in project `ns` for one instance
    /// start: `latest` becomes the highest enabled version now, a number stays that version.
    /// Errors name the secret and version (an env value must be UTF-8 text without NUL).
    pub fn material(
        &self,
        ns: &str,
        env: &[skiff_model::SecretEnv],
        volumes: &[skiff_model::SecretVolume],
    ) -> Result<skiff_runtime::SecretMaterial> {
        let mut out = skiff_runtime::SecretMaterial::default();
        for e in env {
            let (n, data) = self.access(ns, &e.secret, VersionRef::parse(&e.version)?)?;
            let text = String::from_utf8(data)
                .ok()
                .filter(|t| !t.contains('\0'))
                .ok_or_else(|| {
                    SecretsError::Invalid(format!(
                        "env var {}: version {n} of secret {} is not text (UTF-8 without NUL): mount it as a file instead",
                        e.name, e.secret
                    ))
                })?;
            out.env.push((e.name.clone(), text));
        }
        for v in volumes {
            let mut files = Vec::new();
            for (version, path) in &v.files {
                let (_, data) = self.access(ns, &v.secret, VersionRef::parse(version)?)?;
                files.push((path.clone(), data));
            }
            out.volumes.push(skiff_runtime::SecretFiles {
                mount_path: v.mount_path.clone(),
                files,
            });
        }
        Ok(out)
    }
}

fn version_not_found(ns: &str, id: &str, n: u64) -> SecretsError {
    SecretsError::NotFound(format!(
        "secret {id} in project {ns} has no version {n}: list them with skiff secrets versions list {id}"
    ))
}

/// The associated data that binds a ciphertext to its version.
fn aad(ns: &str, id: &str, version: u64) -> Vec<u8> {
    format!("projects/{ns}/secrets/{id}/versions/{version}").into_bytes()
}

/// Makes a file readable by its owner only.
fn restrict(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        SecretsError::Io {
            path: path.display().to_string(),
            source: e,
        }
    })
}

#[cfg(test)]
mod tests;
