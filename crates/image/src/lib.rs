//! skiff-image: importing container images from local archives into a content-addressed store,
//! and resolving them into what a runtime needs (unpacked layer directories plus the image
//! config).
//!
//! Store layout under `ROOT`:
//! - `blobs/sha256/<hex>`: manifests, configs and layer blobs, each verified against its digest
//!   on import (docker archives are converted to OCI manifests, so only OCI-style manifests are
//!   stored);
//! - `layers/<diff_id-hex>/`: every layer unpacked once, shared by all images, ready to be an
//!   overlayfs lowerdir (whiteouts already in overlayfs form);
//! - `refs.json`: `NAME:TAG` -> manifest digest, replaced atomically; a reference may name a
//!   runnable image, an image index (resolved to this machine's platform) or an artifact
//!   (kept verbatim, never run);
//! - `tmp/`: staging for imports in progress; `gc.lock`, `refs.lock`: `flock` locks.
//!
//! Imports accept an OCI image layout directory, an OCI archive, or a docker archive (both the
//! legacy `<id>/layer.tar` layout and the newer one pointing into `blobs/sha256/`), optionally
//! gzip/zstd compressed; layers may be plain, gzip or zstd tar streams.

mod compression;
mod content;
mod digest;
mod error;
mod import;
mod oci;
mod reference;
mod refs;
mod source;
mod store;
mod unpack;

use serde::{Deserialize, Serialize};

pub use content::{manifest_kind, manifest_media_type, ManifestKind};
pub use error::ImageError;

/// Unpack one layer blob (a tar stream, plain, gzip or zstd) at `blob` into the existing empty
/// directory `dest` with every rule an import applies (cleaned names, no escape through `..`,
/// symlinks or hard links, whiteouts converted). Returns the layer's diff_id
/// (`sha256:...`). On error `dest` may hold a partial tree. The store uses this internally;
/// it is public for the unpacker's fuzz target (`crates/image/fuzz`).
pub fn unpack_layer_file(
    blob: &std::path::Path,
    dest: &std::path::Path,
) -> Result<String, ImageError> {
    unpack::unpack_layer(blob, "the layer", dest)
}
pub use reference::{parse_digest, parse_reference, Reference, DEFAULT_TAG};
pub use store::{ImageStore, PruneReport, Staging};

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    /// The normalized `NAME:TAG` the image is stored under.
    pub reference: String,
    /// `sha256:...` of the stored manifest.
    pub digest: String,
}

/// One reference in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Normalized `NAME:TAG`.
    pub reference: String,
    /// Manifest digest `sha256:...`.
    pub digest: String,
    /// Bytes of the image's blobs as stored (manifest, config and compressed layers).
    pub size: u64,
    /// The config's `created` timestamp (RFC 3339), when it has one.
    pub created: Option<String>,
    /// Where the reference came from; `None` for references recorded before sources were.
    #[serde(default)]
    pub source: Option<ImageSource>,
}

/// Where a stored reference came from: `skiff images import`, a pull from a registry, a
/// push into Skiff's own registry, or a source build (`skiff deploy --source`, `skiff builds
/// submit`). Serialized lower-case (`"imported"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    Imported,
    Pulled,
    Pushed,
    Built,
}

/// What a runtime needs to run an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// Manifest digest `sha256:...`.
    pub digest: String,
    /// Unpacked layer directories, bottom (first) to top (last). A layer that occurs more than
    /// once is listed only at its topmost position (overlayfs refuses repeated lowerdirs, and
    /// the topmost copy already decides every path it touches).
    pub layers: Vec<std::path::PathBuf>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `K=V` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// TCP ports from `ExposedPorts`, sorted.
    pub exposed_ports: Vec<u16>,
}
