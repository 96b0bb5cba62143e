//! `ImageError`: every way importing, resolving or deleting an image can fail. Messages are
//! lower-case, carry no trailing period and say what the user can do about the failure.

use std::io;

/// An image operation that failed; the message names the file, blob or entry at fault.
#[derive(thiserror::Error, Debug)]
pub enum ImageError {
    /// An I/O operation failed; `context` says on what.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// A reference the user typed is not `NAME[:TAG]` or `NAME@sha256:HEX`.
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    /// The input is not an image archive or layout at all.
    #[error(
        "{path}: not an image archive: {reason}; give an OCI image layout directory, an OCI \
         archive or a docker archive (docker save)"
    )]
    NotAnImage { path: String, reason: String },

    /// The archive carries no usable name and none was given.
    #[error("{path}: the archive does not name its image{detail}; pass --name NAME[:TAG]")]
    NeedName { path: String, detail: String },

    /// The archive holds several images and nothing says which one to import.
    #[error(
        "{path}: the archive holds several images ({choices}); pass --name with the \
         NAME:TAG of the one to import"
    )]
    Ambiguous { path: String, choices: String },

    /// A blob's content does not hash to the digest that names it.
    #[error(
        "blob {digest} ({what}) has content with digest {actual}; the archive is corrupt or \
         was tampered with, export the image again"
    )]
    DigestMismatch {
        what: String,
        digest: String,
        actual: String,
    },

    /// A blob's length differs from the size its descriptor gives.
    #[error(
        "blob {digest} ({what}) is {actual} bytes but its descriptor says {expected}; the \
         archive is corrupt, export the image again"
    )]
    SizeMismatch {
        what: String,
        digest: String,
        expected: u64,
        actual: u64,
    },

    /// A blob the image needs is not in the archive.
    #[error("{path}: blob {digest} ({what}) is missing from the archive; export the image again")]
    MissingBlob {
        path: String,
        what: String,
        digest: String,
    },

    /// A layer's uncompressed stream does not hash to the diff_id in the image config.
    #[error(
        "layer {layer}: uncompressed content has diff_id {actual} but the image config says \
         {expected}; the archive is corrupt or was tampered with, export the image again"
    )]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },

    /// A layer entry would create or change something outside the layer directory.
    #[error("layer {layer} entry {entry:?}: {reason}; refusing the image")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A layer entry is malformed or cannot be applied.
    #[error("layer {layer} entry {entry:?}: {reason}; refusing the image")]
    BadEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// A layer blob is not a (compressed) tar stream.
    #[error("layer {layer}: {reason}; export the image again")]
    BadLayer { layer: String, reason: String },

    /// Something the image uses that this store does not support.
    #[error("{what}: {reason}")]
    Unsupported { what: String, reason: String },

    /// A JSON document of the image or the store does not parse.
    #[error("{what} is not valid: {source}; export the image again")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// No image answers to the reference.
    #[error("no image {reference:?} in the image store; import it first or check `images list`")]
    NotFound { reference: String },

    /// The reference names something the store keeps but cannot run: an artifact (signature,
    /// SBOM...), or an index without an image for this machine.
    #[error("{reference} is not a runnable container image: {reason}")]
    NotRunnable { reference: String, reason: String },

    /// A blob cannot be deleted while a reference or a pinned digest reaches it.
    #[error("blob {digest} is in use by {user}; delete the manifests that name it first")]
    InUse { digest: String, user: String },

    /// A manifest pushed into the store names a blob or manifest the store lacks.
    #[error("{what} {digest} is not in the image store; push it first")]
    MissingContent { what: String, digest: String },

    /// The store on disk is inconsistent (a blob or layer it should hold is gone).
    #[error("image store {root}: {reason}")]
    Corrupt { root: String, reason: String },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> ImageError {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach a context string to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
