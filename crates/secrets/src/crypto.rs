//! The store's key and AEAD: AES-256-GCM (the `aes-gcm` crate) with a random 96-bit nonce per
//! value. The key is 32 random bytes in `DATA/secrets.key`, written once with mode 0600.

use crate::{Result, SecretsError};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use std::path::Path;

pub(crate) struct Key(Aes256Gcm);

impl Key {
    /// Reads the key at `path`, or creates it (mode 0600) with 32 random bytes.
    pub(crate) fn load_or_create(path: &Path) -> Result<Self> {
        let io = |e| SecretsError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let key = Aes256Gcm::generate_key(&mut rand::rngs::OsRng);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                key.to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| {
            SecretsError::Crypto(format!(
                "{}: the key is {} bytes, not 32: restore the key this store was written with",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Key(cipher))
    }

    /// Encrypts `data`, binding it to `aad`; returns (nonce, ciphertext with its tag).
    pub(crate) fn seal(&self, aad: &[u8], data: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        let nonce = Aes256Gcm::generate_nonce(&mut rand::rngs::OsRng);
        let ct = self
            .0
            .encrypt(&nonce, Payload { msg: data, aad })
            .map_err(|_| SecretsError::Crypto("cannot encrypt the secret's value".into()))?;
        Ok((nonce.to_vec(), ct))
    }

    /// Decrypts what [`Key::seal`] made with the same `aad`.
    pub(crate) fn open(
        &self,
        aad: &[u8],
        nonce: &[u8],
        ct: &[u8],
    ) -> std::result::Result<Vec<u8>, ()> {
        if nonce.len() != 12 {
            return Err(());
        }
        self.0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| ())
    }
}
