//! What a stored manifest is and what it reaches: the store keeps container images (unpacked,
//! runnable), image indexes / Docker manifest lists (one entry per platform, each entry a
//! manifest of its own) and artifacts (OCI manifests whose config or `artifactType` says they
//! are not images: signatures, SBOMs, attestations), all as verbatim blobs.
//!
//! The kinds follow the OCI image spec (`image-index.md`, `manifest.md`, `artifacts-guidance.md`):
//! a manifest is an image when its config is an image config (OCI or Docker), every layer (if
//! any) is a tar layer, and it has no `artifactType`; anything else with a `config` is an
//! artifact.

use serde::Deserialize;

use crate::oci::{self, Descriptor};

/// `sha256` of the two bytes `{}`, the empty descriptor's digest.
pub(crate) const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

const IMAGE_LAYER_TYPES: &[&str] = &[
    oci::MT_LAYER_TAR,
    oci::MT_LAYER_GZIP,
    oci::MT_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// The fields of any manifest or index that decide its kind and what it references.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnyManifest {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

/// What a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A runnable container image (OCI image manifest or Docker v2 schema 2).
    Image,
    /// An image index or Docker manifest list.
    Index,
    /// Any other manifest with a config (signature, SBOM, attestation...).
    Artifact,
}

impl AnyManifest {
    /// Parse a manifest's bytes. Errors name what does not parse.
    pub(crate) fn parse(bytes: &[u8]) -> Result<AnyManifest, String> {
        let m: AnyManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(m)
    }

    /// The kind, or why the document is no manifest Skiff can store.
    pub(crate) fn kind(&self) -> Result<ManifestKind, String> {
        if self.schema_version != Some(2) {
            return Err(format!(
                "schemaVersion is {}, not 2 (Docker schema 1 manifests are not supported; push with a current client)",
                self.schema_version
                    .map_or("missing".to_string(), |v| v.to_string())
            ));
        }
        let mt = self.media_type.as_deref();
        let is_index = matches!(mt, Some(oci::MT_OCI_INDEX) | Some(oci::MT_DOCKER_LIST))
            || (mt.is_none() && self.manifests.is_some() && self.config.is_none());
        if is_index {
            if self.manifests.is_none() {
                return Err("an index must list its manifests".into());
            }
            if self.config.is_some() || self.layers.is_some() {
                return Err("an index has no config or layers".into());
            }
            return Ok(ManifestKind::Index);
        }
        if let Some(mt) = mt {
            if mt != oci::MT_OCI_MANIFEST && mt != oci::MT_DOCKER_MANIFEST {
                return Err(format!(
                    "media type {mt:?} is not an OCI image manifest, image index or Docker v2 manifest"
                ));
            }
        }
        if self.manifests.is_some() {
            return Err("a manifest has no manifests list (only an index has)".into());
        }
        let Some(config) = &self.config else {
            return Err("the manifest has no config".into());
        };
        let image_config = match config.media_type.as_deref() {
            None => true,
            Some(t) => t == oci::MT_OCI_CONFIG || t == oci::MT_DOCKER_CONFIG,
        };
        let tar_layers = self.layers.iter().flatten().all(|l| {
            l.media_type
                .as_deref()
                .is_none_or(|t| IMAGE_LAYER_TYPES.contains(&t))
        });
        let image = self.artifact_type.is_none() && image_config && tar_layers;
        Ok(if image {
            ManifestKind::Image
        } else {
            ManifestKind::Artifact
        })
    }

    /// Every blob a manifest references (config and layers), each once, in order.
    pub(crate) fn blobs(&self) -> Vec<&Descriptor> {
        let mut out: Vec<&Descriptor> = Vec::new();
        for d in self.config.iter().chain(self.layers.iter().flatten()) {
            if !out.iter().any(|o| o.digest == d.digest) {
                out.push(d);
            }
        }
        out
    }

    /// The manifests an index lists.
    pub(crate) fn children(&self) -> &[Descriptor] {
        self.manifests.as_deref().unwrap_or(&[])
    }

    /// The media type to serve the manifest with: its own `mediaType`, or by its shape.
    pub(crate) fn served_media_type(&self) -> &str {
        match self.media_type.as_deref() {
            Some(t) => t,
            None if self.manifests.is_some() && self.config.is_none() => oci::MT_OCI_INDEX,
            None => oci::MT_OCI_MANIFEST,
        }
    }
}

/// The media type a manifest's bytes declare, or by their shape (an index when they list
/// `manifests`); the OCI image manifest type when they do not parse.
pub fn manifest_media_type(bytes: &[u8]) -> String {
    AnyManifest::parse(bytes)
        .map(|m| m.served_media_type().to_string())
        .unwrap_or_else(|_| oci::MT_OCI_MANIFEST.to_string())
}

/// The kind of the manifest in `bytes`, or why it is not one Skiff stores (a sentence fit
/// for a `MANIFEST_INVALID` error).
pub fn manifest_kind(bytes: &[u8]) -> Result<ManifestKind, String> {
    AnyManifest::parse(bytes)
        .map_err(|e| format!("the manifest is not valid JSON: {e}"))?
        .kind()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";

    fn kind(json: serde_json::Value) -> Result<ManifestKind, String> {
        manifest_kind(json.to_string().as_bytes())
    }

    fn desc(mt: &str) -> serde_json::Value {
        serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", "a".repeat(64)), "size": 2})
    }

    #[test]
    fn kinds() {
        let image = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_MANIFEST,
            "config": desc(oci::MT_OCI_CONFIG), "layers": [desc(oci::MT_LAYER_GZIP)]});
        assert_eq!(kind(image.clone()), Ok(ManifestKind::Image));
        let mut with_type = image.clone();
        with_type["artifactType"] = "application/vnd.example.sbom".into();
        assert_eq!(kind(with_type), Ok(ManifestKind::Artifact));
        let sig = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_MANIFEST,
            "config": desc(MT_EMPTY), "layers": [desc("application/vnd.example.sig")]});
        assert_eq!(kind(sig), Ok(ManifestKind::Artifact));
        let no_layers = serde_json::json!({"schemaVersion": 2,
            "config": desc(oci::MT_OCI_CONFIG), "layers": []});
        assert_eq!(kind(no_layers), Ok(ManifestKind::Image));
        let docker = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_DOCKER_MANIFEST,
            "config": desc(oci::MT_DOCKER_CONFIG),
            "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip")]});
        assert_eq!(kind(docker), Ok(ManifestKind::Image));
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_INDEX,
            "manifests": [desc(oci::MT_OCI_MANIFEST)]});
        assert_eq!(kind(index), Ok(ManifestKind::Index));
        let list = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_DOCKER_LIST,
            "manifests": []});
        assert_eq!(kind(list), Ok(ManifestKind::Index));
        let bare_index = serde_json::json!({"schemaVersion": 2, "manifests": []});
        assert_eq!(kind(bare_index), Ok(ManifestKind::Index));

        for (bad, says) in [
            (
                serde_json::json!({"schemaVersion": 1, "fsLayers": []}),
                "schema 1",
            ),
            (
                serde_json::json!({"schemaVersion": 2, "mediaType": "text/plain",
                "config": desc(oci::MT_OCI_CONFIG)}),
                "text/plain",
            ),
            (
                serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_MANIFEST}),
                "no config",
            ),
            (
                serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_INDEX}),
                "list its manifests",
            ),
            (
                serde_json::json!({"schemaVersion": 2, "mediaType": oci::MT_OCI_INDEX,
                "manifests": [], "config": desc(oci::MT_OCI_CONFIG)}),
                "no config",
            ),
        ] {
            let err = kind(bad).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
        assert!(manifest_kind(b"{").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn served_media_types() {
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            oci::MT_OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{"digest":"x","size":1}}"#),
            oci::MT_OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(
                br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#
            ),
            oci::MT_DOCKER_LIST
        );
    }
}
