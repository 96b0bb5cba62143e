//! Files under `DATA/acme/`:
//!
//! - `accounts/ID.json` (0600): the account's credentials (URL and PKCS#8 key, as
//!   `instant_acme::AccountCredentials` serializes them), one per directory URL; `ID` is the
//!   first 16 hex digits of the SHA-256 of the directory URL.
//! - `certs/HOST/cert.pem`: the certificate chain as the CA issued it, leaf first;
//!   `certs/HOST/key.pem` (0600): its private key (PKCS#8 PEM).
//!
//! Files are written to a temporary name and renamed, so a crash leaves the old or the new
//! file, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::AcmeError;

/// What Skiff knows of an issued certificate, read from its leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number, lower-case hex without separators.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// Reads the first certificate of a PEM chain.
    ///
    /// Errors: [`AcmeError::Certificate`] when there is none or it cannot be parsed.
    pub fn from_pem(host: &str, chain_pem: &str) -> Result<CertInfo, AcmeError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |reason: String| AcmeError::Certificate {
            host: host.to_owned(),
            reason,
        };
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .next()
            .ok_or_else(|| bad("no certificate in the chain".into()))?
            .map_err(|e| bad(format!("not valid PEM: {e}")))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| bad(e.to_string()))?;
        let validity = cert.validity();
        Ok(CertInfo {
            serial: hex::encode(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }
}

/// The paths under one data directory's `acme/`.
#[derive(Debug, Clone)]
pub struct AcmeDir {
    root: PathBuf,
}

impl AcmeDir {
    /// `root` is `DATA/acme`.
    pub fn new(root: impl Into<PathBuf>) -> AcmeDir {
        AcmeDir { root: root.into() }
    }

    /// The account file for `directory_url`.
    pub fn account_file(&self, directory_url: &str) -> PathBuf {
        let id = hex::encode(Sha256::digest(directory_url.as_bytes()));
        self.root
            .join("accounts")
            .join(format!("{}.json", &id[..16]))
    }

    /// The directory holding `host`'s `cert.pem` and `key.pem`.
    pub fn cert_dir(&self, host: &str) -> PathBuf {
        self.root.join("certs").join(host)
    }

    /// Stored `(host, chain PEM, key PEM)` for every host directory with both files.
    /// Unreadable entries are skipped with a warning.
    pub fn stored_certs(&self) -> Vec<(String, String, String)> {
        let Ok(entries) = std::fs::read_dir(self.root.join("certs")) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let host = e.file_name().to_string_lossy().into_owned();
            if host.starts_with('.') {
                continue;
            }
            let dir = e.path();
            match (
                std::fs::read_to_string(dir.join("cert.pem")),
                std::fs::read_to_string(dir.join("key.pem")),
            ) {
                (Ok(c), Ok(k)) => out.push((host, c, k)),
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(host, %err, "skipping a stored ACME certificate")
                }
            }
        }
        out.sort();
        out
    }

    /// Stores `host`'s chain and key (the key 0600).
    pub fn store_cert(&self, host: &str, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        let dir = self.cert_dir(host);
        create_dir(&dir)?;
        write_private(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_private(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)
    }
}

/// Creates `dir` and its parents, 0700.
pub(crate) fn create_dir(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AcmeError::Io {
            path: dir.display().to_string(),
            source,
        })
}

/// Writes `data` to `path` with `mode` through a temporary file and a rename.
pub(crate) fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), AcmeError> {
    let io = |source| AcmeError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_and_lists_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AcmeDir::new(tmp.path().join("acme"));
        assert!(dir.stored_certs().is_empty());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        dir.store_cert("a.example.com", &cert.pem(), &key.serialize_pem())
            .unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.cert_dir("a.example.com").join("key.pem")), 0o600);
        let stored = dir.stored_certs();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].0, "a.example.com");
        let info = CertInfo::from_pem("a.example.com", &stored[0].1).unwrap();
        assert_eq!(
            info.serial,
            hex::encode(
                x509_parser::parse_x509_certificate(cert.der())
                    .unwrap()
                    .1
                    .raw_serial()
            )
        );
        assert!(info.not_after > info.not_before);
        assert!(CertInfo::from_pem("x", "not pem").is_err());
        // One account file per directory URL.
        assert_ne!(
            dir.account_file("https://a/dir"),
            dir.account_file("https://b/dir")
        );
    }
}
