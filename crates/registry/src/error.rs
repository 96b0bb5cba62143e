//! `RegistryError`: everything a pull from an OCI distribution registry, or Skiff's own
//! registry settings, can fail with. Messages name the registry or reference and say what to do.

use skiff_image::ImageError;

/// Errors of the registry client and its settings.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse as `HOST[:PORT]/REPO[:TAG|@DIGEST]`.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// The registry could not be reached at all (connection refused, DNS, TLS handshake).
    #[error("cannot reach the registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },
    /// The registry refused the credentials, or asked for some and none were found.
    #[error("the registry {registry} refused access to {reference}: {reason}; log in with `skiff registries login {registry}` (or put credentials in the server's ~/.docker/config.json or $REGISTRY_AUTH_FILE)")]
    Unauthorized {
        registry: String,
        reference: String,
        reason: String,
    },
    /// `skiff registries login`: the registry refused the credentials given (nothing is saved).
    #[error("the registry {registry} refused the login: {reason}; nothing was saved: give the right credentials with `skiff registries login {registry} -u USER --password-stdin` (or --password)")]
    LoginRefused { registry: String, reason: String },
    /// The registry has no such repository, tag or digest.
    #[error("the registry has no image {reference}: check the repository and tag (push it first)")]
    NotFound { reference: String },
    /// An image index without an entry for this host's platform.
    #[error("image {reference} has no variant for {wanted} (it has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    /// A manifest of a kind that is not a container image.
    #[error("{reference} is not a container image: {reason}")]
    Unsupported { reference: String, reason: String },
    /// Any other failure the registry reported.
    #[error("pulling {reference} failed: {reason}")]
    Registry { reference: String, reason: String },
    /// The pulled image did not import (digest mismatch, bad layer...).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A registry settings or credentials file is malformed.
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RegistryError::Io {
            context: context.into(),
            source,
        }
    }
}
