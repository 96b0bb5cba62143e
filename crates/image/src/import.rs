//! Reading an import source into a plan: which image to take (by name, ref annotation or
//! platform), its verified manifest and config, and where each layer blob lies. Planning reads
//! only metadata and checks that every blob is present, so a broken archive fails before the
//! store is touched.

use crate::digest::{hex_of, is_hex64, sha256_digest};
use crate::error::ImageError;
use crate::oci::{
    self, Descriptor, ImageConfig, Index, Manifest, ANN_CONTAINERD_NAME, ANN_REF_NAME,
};
use crate::reference::{parse_digest, parse_reference, Reference};
use crate::source::{normalize, Format, Source};

/// Largest JSON document (index, manifest, config) read from an archive.
const JSON_LIMIT: u64 = 16 << 20;
/// How deep indexes may nest.
const MAX_INDEX_DEPTH: usize = 4;

/// How the manifest to store is obtained.
pub(crate) enum ManifestPlan {
    /// An OCI (or Docker schema 2) manifest from the archive, digest verified.
    Verbatim { bytes: Vec<u8>, digest: String },
    /// A docker archive: build an OCI manifest once the layer digests are known.
    Synthesize,
}

/// One layer to bring in.
pub(crate) struct LayerPlan {
    /// Where the blob lies in the source.
    pub path: String,
    /// The blob digest the source promises (verified while copying), when it gives one.
    pub digest: Option<String>,
    /// The blob size the manifest gives, when it gives one.
    pub size: Option<u64>,
    /// The diff_id from the image config.
    pub diff_id: String,
}

/// Everything needed to import one image.
pub(crate) struct Plan {
    /// Normalized `NAME:TAG` the image is stored under.
    pub reference: String,
    pub manifest: ManifestPlan,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<LayerPlan>,
}

/// What the archive itself calls the chosen image.
enum ArchiveRef {
    Full(Reference),
    TagOnly(String),
    Unnamed,
}

fn not_an_image(src: &Source, reason: impl Into<String>) -> ImageError {
    ImageError::NotAnImage {
        path: src.display.clone(),
        reason: reason.into(),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        what: what.to_string(),
        source,
    })
}

/// Plan the import of `src`. `name` (already parsed, never a digest reference) overrides the
/// archive's own reference.
pub(crate) fn plan(src: &Source, name: Option<&Reference>) -> Result<Plan, ImageError> {
    match src.format()? {
        Format::Oci => plan_oci(src, name),
        Format::Docker => plan_docker(src, name),
    }
}

/// Decide the stored reference: the given name, else the archive's full reference.
fn decide_reference(
    src: &Source,
    name: Option<&Reference>,
    archive: ArchiveRef,
) -> Result<String, ImageError> {
    if let Some(n) = name {
        return Ok(n.normalized());
    }
    match archive {
        ArchiveRef::Full(r) => Ok(r.normalized()),
        ArchiveRef::TagOnly(t) => Err(ImageError::NeedName {
            path: src.display.clone(),
            detail: format!(" (it only carries the tag {t:?})"),
        }),
        ArchiveRef::Unnamed => Err(ImageError::NeedName {
            path: src.display.clone(),
            detail: String::new(),
        }),
    }
}

/// Read a blob named by a descriptor, verifying its digest and size.
fn read_blob(src: &Source, desc: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(src, &desc.digest, what)?;
    let Some(bytes) = src.read_small(&path, JSON_LIMIT)? else {
        return Err(ImageError::MissingBlob {
            path: src.display.clone(),
            what: what.to_string(),
            digest: desc.digest.clone(),
        });
    };
    let actual = sha256_digest(&bytes);
    if actual != desc.digest {
        return Err(ImageError::DigestMismatch {
            what: what.to_string(),
            digest: desc.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(ImageError::SizeMismatch {
            what: what.to_string(),
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// `blobs/sha256/HEX` for a digest, which must be a valid sha256 digest.
fn blob_path(src: &Source, digest: &str, what: &str) -> Result<String, ImageError> {
    parse_digest(digest).map_err(|_| {
        if digest.starts_with("sha256:") {
            not_an_image(
                src,
                format!("the {what} descriptor has a malformed digest {digest:?}"),
            )
        } else {
            ImageError::Unsupported {
                what: format!("{}: {what} {digest}", src.display),
                reason: "only sha256 digests are supported; export the image again with sha256"
                    .into(),
            }
        }
    })?;
    Ok(format!("blobs/sha256/{}", hex_of(digest)))
}

/// The reference an index entry carries, if any.
fn archive_ref(d: &Descriptor) -> ArchiveRef {
    if let Some(full) = d.annotation(ANN_CONTAINERD_NAME) {
        if let Ok(r) = parse_reference(full) {
            if r.digest.is_none() {
                return ArchiveRef::Full(r);
            }
        }
    }
    match d.annotation(ANN_REF_NAME) {
        // A bare word is a tag (skopeo's `oci:DIR:TAG`); with '/' or ':' it is a full name.
        Some(v) if v.contains(':') || v.contains('/') => match parse_reference(v) {
            Ok(r) if r.digest.is_none() => ArchiveRef::Full(r),
            _ => ArchiveRef::Unnamed,
        },
        Some(v) if !v.is_empty() => ArchiveRef::TagOnly(v.to_string()),
        _ => ArchiveRef::Unnamed,
    }
}

fn ref_label(d: &Descriptor) -> Option<String> {
    match archive_ref(d) {
        ArchiveRef::Full(r) => Some(r.normalized()),
        ArchiveRef::TagOnly(t) => Some(t),
        ArchiveRef::Unnamed => None,
    }
}

fn ref_matches(d: &Descriptor, name: &Reference) -> bool {
    match archive_ref(d) {
        ArchiveRef::Full(r) => r.normalized() == name.normalized(),
        ArchiveRef::TagOnly(t) => name.tag.as_deref() == Some(t.as_str()),
        ArchiveRef::Unnamed => false,
    }
}

/// Pick the top-level index entry to import.
fn select_top<'a>(
    src: &Source,
    descs: &'a [Descriptor],
    name: Option<&Reference>,
) -> Result<&'a Descriptor, ImageError> {
    if descs.is_empty() {
        return Err(not_an_image(src, "index.json lists no images"));
    }
    let matching: Vec<&Descriptor> = match name {
        Some(n) => descs.iter().filter(|d| ref_matches(d, n)).collect(),
        None => Vec::new(),
    };
    let candidates: Vec<&Descriptor> = if matching.is_empty() {
        descs.iter().collect()
    } else {
        matching
    };
    let mut labels: Vec<Option<String>> = candidates.iter().map(|d| ref_label(d)).collect();
    labels.sort();
    labels.dedup();
    let ambiguous = |labels: Vec<String>| ImageError::Ambiguous {
        path: src.display.clone(),
        choices: labels.join(", "),
    };
    if labels.len() > 1 {
        return Err(ambiguous(
            labels
                .into_iter()
                .map(|l| l.unwrap_or_else(|| "an unnamed image".into()))
                .collect(),
        ));
    }
    if let [only] = candidates.as_slice() {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    // Entries naming their platform (one or several under one name): the host's is taken.
    let owned: Vec<Descriptor> = candidates.iter().map(|d| (*d).clone()).collect();
    let chosen = oci::choose_platform(&owned).map_err(|reason| ImageError::Unsupported {
        what: src.display.clone(),
        reason,
    })?;
    let i = owned
        .iter()
        .position(|d| std::ptr::eq(d, chosen))
        .unwrap_or(0);
    Ok(candidates[i])
}

/// Follow nested indexes down to one image manifest; returns its verified bytes and digest.
fn descend(src: &Source, desc: &Descriptor) -> Result<(Vec<u8>, String), ImageError> {
    let mut desc = desc.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = read_blob(src, &desc, "manifest")?;
        let is_index = desc.is_index() || {
            // No media type on the descriptor: the document tells.
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Probe {
                media_type: Option<String>,
                manifests: Option<serde_json::Value>,
            }
            let probe: Probe = parse_json(&bytes, &format!("manifest {}", desc.digest))?;
            matches!(
                probe.media_type.as_deref(),
                Some(oci::MT_OCI_INDEX) | Some(oci::MT_DOCKER_LIST)
            ) || probe.manifests.is_some()
        };
        if !is_index {
            return Ok((bytes, desc.digest.clone()));
        }
        let index: Index = parse_json(&bytes, &format!("image index {}", desc.digest))?;
        desc = oci::choose_platform(&index.manifests)
            .map_err(|reason| ImageError::Unsupported {
                what: src.display.clone(),
                reason,
            })?
            .clone();
    }
    Err(not_an_image(src, "its image indexes nest too deeply"))
}

fn check_config_media_type(src: &Source, mt: Option<&str>) -> Result<(), ImageError> {
    match mt {
        None | Some(oci::MT_OCI_CONFIG) | Some(oci::MT_DOCKER_CONFIG) => Ok(()),
        Some(other) => Err(ImageError::Unsupported {
            what: src.display.clone(),
            reason: format!(
                "it is not a container image (its config has media type {other:?}); only \
                 container images can be imported"
            ),
        }),
    }
}

fn check_layer_media_type(src: &Source, d: &Descriptor) -> Result<(), ImageError> {
    let Some(mt) = d.media_type.as_deref() else {
        return Ok(());
    };
    if mt.contains("encrypted") {
        return Err(ImageError::Unsupported {
            what: format!("{}: layer {}", src.display, d.digest),
            reason: "encrypted layers are not supported; decrypt the image first".into(),
        });
    }
    if !mt.contains("tar") && !mt.contains("rootfs") {
        return Err(ImageError::Unsupported {
            what: format!("{}: layer {}", src.display, d.digest),
            reason: format!("layer media type {mt:?} is not a tar layer"),
        });
    }
    Ok(())
}

fn check_diff_ids(
    src: &Source,
    config: &ImageConfig,
    layers: usize,
) -> Result<Vec<String>, ImageError> {
    let diff_ids = config.diff_ids();
    if diff_ids.len() != layers {
        return Err(not_an_image(
            src,
            format!(
                "the image config lists {} diff_ids but the image has {layers} layers",
                diff_ids.len()
            ),
        ));
    }
    for d in diff_ids {
        parse_digest(d).map_err(|_| {
            not_an_image(
                src,
                format!("the image config has a malformed diff_id {d:?}"),
            )
        })?;
    }
    Ok(diff_ids.to_vec())
}

fn plan_oci(src: &Source, name: Option<&Reference>) -> Result<Plan, ImageError> {
    let index_bytes = src
        .read_small("index.json", JSON_LIMIT)?
        .ok_or_else(|| not_an_image(src, "index.json is missing"))?;
    let index: Index = parse_json(&index_bytes, &format!("{}: index.json", src.display))?;
    let top = select_top(src, &index.manifests, name)?;
    let reference = decide_reference(src, name, archive_ref(top))?;
    let (manifest_bytes, manifest_digest) = descend(src, top)?;
    let manifest: Manifest = parse_json(&manifest_bytes, &format!("manifest {manifest_digest}"))?;
    match manifest.media_type.as_deref() {
        None | Some(oci::MT_OCI_MANIFEST) | Some(oci::MT_DOCKER_MANIFEST) => {}
        Some(other) => {
            return Err(ImageError::Unsupported {
                what: src.display.clone(),
                reason: format!("manifest media type {other:?} is not an image manifest"),
            })
        }
    }
    check_config_media_type(src, manifest.config.media_type.as_deref())?;
    let config_bytes = read_blob(src, &manifest.config, "config")?;
    let config: ImageConfig = parse_json(
        &config_bytes,
        &format!("image config {}", manifest.config.digest),
    )?;
    let diff_ids = check_diff_ids(src, &config, manifest.layers.len())?;
    let mut layers = Vec::new();
    for (d, diff_id) in manifest.layers.iter().zip(diff_ids) {
        check_layer_media_type(src, d)?;
        let path = blob_path(src, &d.digest, "layer")?;
        if !src.exists(&path)? {
            return Err(ImageError::MissingBlob {
                path: src.display.clone(),
                what: "layer".into(),
                digest: d.digest.clone(),
            });
        }
        layers.push(LayerPlan {
            path,
            digest: Some(d.digest.clone()),
            size: Some(d.size),
            diff_id,
        });
    }
    Ok(Plan {
        reference,
        manifest: ManifestPlan::Verbatim {
            bytes: manifest_bytes,
            digest: manifest_digest,
        },
        config: config_bytes,
        config_digest: manifest.config.digest.clone(),
        layers,
    })
}

/// One image of a docker archive's manifest.json.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// The digest an archive path promises by its name (`blobs/sha256/HEX` or, for configs,
/// `HEX.json`), if it promises one.
fn digest_from_path(path: &str, json_name: bool) -> Option<String> {
    let norm = normalize(path)?;
    if let Some(hex) = norm.strip_prefix("blobs/sha256/") {
        return is_hex64(hex).then(|| format!("sha256:{hex}"));
    }
    if json_name {
        if let Some(hex) = norm.strip_suffix(".json") {
            return is_hex64(hex).then(|| format!("sha256:{hex}"));
        }
    }
    None
}

fn plan_docker(src: &Source, name: Option<&Reference>) -> Result<Plan, ImageError> {
    let bytes = src
        .read_small("manifest.json", JSON_LIMIT)?
        .ok_or_else(|| not_an_image(src, "manifest.json is missing"))?;
    let entries: Vec<DockerEntry> = parse_json(&bytes, &format!("{}: manifest.json", src.display))?;
    if entries.is_empty() {
        return Err(not_an_image(src, "manifest.json lists no images"));
    }
    let tags = |e: &DockerEntry| -> Vec<Reference> {
        e.repo_tags
            .iter()
            .flatten()
            .filter_map(|t| parse_reference(t).ok())
            .filter(|r| r.digest.is_none())
            .collect()
    };
    let matching: Vec<&DockerEntry> = match name {
        Some(n) => entries
            .iter()
            .filter(|e| tags(e).iter().any(|t| t.normalized() == n.normalized()))
            .collect(),
        None => Vec::new(),
    };
    let entry = if matching.len() == 1 {
        matching[0]
    } else if entries.len() == 1 {
        &entries[0]
    } else {
        let choices: Vec<String> = entries
            .iter()
            .map(|e| {
                tags(e)
                    .first()
                    .map(|r| r.normalized())
                    .unwrap_or_else(|| format!("unnamed image {}", e.config))
            })
            .collect();
        return Err(ImageError::Ambiguous {
            path: src.display.clone(),
            choices: choices.join(", "),
        });
    };
    let archive = match tags(entry).into_iter().next() {
        Some(r) => ArchiveRef::Full(r),
        None => ArchiveRef::Unnamed,
    };
    let reference = decide_reference(src, name, archive)?;

    let config_bytes = src.read_small(&entry.config, JSON_LIMIT)?.ok_or_else(|| {
        not_an_image(
            src,
            format!(
                "manifest.json names the config {:?}, which is missing",
                entry.config
            ),
        )
    })?;
    let config_digest = sha256_digest(&config_bytes);
    if let Some(promised) = digest_from_path(&entry.config, true) {
        if promised != config_digest {
            return Err(ImageError::DigestMismatch {
                what: "config".into(),
                digest: promised,
                actual: config_digest,
            });
        }
    }
    let config: ImageConfig = parse_json(&config_bytes, &format!("image config {config_digest}"))?;
    let diff_ids = check_diff_ids(src, &config, entry.layers.len())?;
    let mut layers = Vec::new();
    for (path, diff_id) in entry.layers.iter().zip(diff_ids) {
        if !src.exists(path)? {
            return Err(not_an_image(
                src,
                format!("manifest.json names the layer {path:?}, which is missing"),
            ));
        }
        layers.push(LayerPlan {
            path: path.clone(),
            digest: digest_from_path(path, false),
            size: None,
            diff_id,
        });
    }
    Ok(Plan {
        reference,
        manifest: ManifestPlan::Synthesize,
        config: config_bytes,
        config_digest,
        layers,
    })
}
