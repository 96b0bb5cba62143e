//! Pulling an image from an OCI distribution registry into the image store.
//!
//! The manifest is fetched with `oci-client` (which verifies it against the digest it asked
//! for or the registry's `Docker-Content-Digest`); an image index or Docker manifest list is
//! resolved to the entry for `linux` and this host's architecture. The config and layer blobs
//! are staged as an OCI image layout under the store's `tmp/`: a blob the store already holds
//! is hard-linked, every other one downloaded (several at once, each checked against its
//! digest by `oci-client` as it streams). The layout is then imported under the reference the
//! user gave, which verifies every digest and diff_id once more and unpacks only new layers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skiff_image::{ImageSource, ImageStore};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::error::RegistryError;
use crate::settings::{Registries, RegistrySettings};

const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What the manifest request accepts: images and indexes, OCI and Docker.
const ACCEPT: &[&str] = &[
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
];

/// Blobs downloaded at once.
const CONCURRENT_DOWNLOADS: usize = 4;

/// Whether `reference` names an image in a registry rather than in the local store: its
/// first path component is a host (it has a `.` or a `:`, or is `localhost`), as in the
/// distribution reference grammar. Docker Hub names (`busybox`, `docker.io/...`) are local
/// names here: the store keeps them in that short form.
pub fn is_registry_reference(reference: &str) -> bool {
    let name = reference.split('@').next().unwrap_or(reference);
    let Some((first, rest)) = name.split_once('/') else {
        return false;
    };
    !rest.is_empty()
        && (first.contains('.') || first.contains(':') || first == "localhost")
        && first != "docker.io"
        && first != "index.docker.io"
}

/// Whether `registry` (`HOST[:PORT]`) is on the loopback interface, which is an insecure
/// registry without being told (HTTPS accepting any certificate, else plain HTTP), as in
/// Docker.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pulled {
    /// The reference the image is stored under (`HOST/REPO:TAG` or `HOST/REPO@sha256:...`).
    pub reference: String,
    /// The manifest digest, which a revision pins.
    pub digest: String,
    /// Config and layer blobs the image has (0 when the store had the whole image already).
    pub blobs: usize,
    /// Of those, how many were downloaded (the rest were in the store already).
    pub downloaded: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
}

/// What a pull is doing, one event at a time, for a progress display (the API streams them
/// as NDJSON lines, `{"event":"blob",...}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PullProgress {
    /// The manifest is resolved to `digest`: `blobs` config and layer blobs, of which
    /// `cached` are in the store already and the others will be downloaded.
    #[serde(rename_all = "camelCase")]
    Resolved {
        digest: String,
        blobs: usize,
        cached: usize,
    },
    /// `downloaded` of `size` bytes of the blob `digest` are here (sent as a download starts,
    /// every [`PROGRESS_STEP`] bytes, and when it is complete and verified: `done`).
    #[serde(rename_all = "camelCase")]
    Blob {
        digest: String,
        size: u64,
        downloaded: u64,
        done: bool,
    },
    /// The download of `digest` was cut off; it goes on from byte `from` with an HTTP
    /// `Range` request (`attempt` counts from 2).
    #[serde(rename_all = "camelCase")]
    Resumed {
        digest: String,
        from: u64,
        attempt: u32,
    },
    /// Every blob is here; the image is being verified and its new layers unpacked.
    Unpacking,
}

/// Where a pull sends its [`PullProgress`] events (dropped events are not an error: nobody
/// may be listening any more).
pub type ProgressSink = tokio::sync::mpsc::UnboundedSender<PullProgress>;

/// Bytes between two progress events of one blob.
pub const PROGRESS_STEP: u64 = 1 << 20;

/// Attempts at one blob download: the first, then resumptions after a cut connection.
const DOWNLOAD_ATTEMPTS: u32 = 5;

/// Pulls images into an [`ImageStore`] with the settings of [`Registries`].
#[derive(Debug, Clone)]
pub struct Puller {
    store: Arc<ImageStore>,
    registries: Arc<Registries>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    schema_version: Option<u32>,
    media_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<PlatformDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlatformDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    config: Blob,
    #[serde(default)]
    layers: Vec<Blob>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Blob {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
}

/// This host's architecture in the OCI (Go) spelling.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Puller {
    /// A puller storing into `store`, with per-registry settings from `registries`.
    pub fn new(store: Arc<ImageStore>, registries: Arc<Registries>) -> Puller {
        Puller { store, registries }
    }

    /// The registry settings this puller uses.
    pub fn registries(&self) -> &Arc<Registries> {
        &self.registries
    }

    /// Pull `reference` (`HOST[:PORT]/REPO[:TAG|@sha256:HEX]`) and store it under that
    /// reference. Errors: [`RegistryError`] naming the registry or reference; the store is
    /// unchanged unless the whole image verified and imported.
    pub async fn pull(&self, reference: &str) -> Result<Pulled, RegistryError> {
        self.pull_with_progress(reference, None).await
    }

    /// [`Puller::pull`], sending what it does to `progress`. A blob download that the
    /// connection cuts off part-way goes on from the bytes already written with a `Range`
    /// request (a registry that answers with the whole blob instead starts it over); the
    /// whole blob is checked against its digest and size at the end either way.
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        progress: Option<&ProgressSink>,
    ) -> Result<Pulled, RegistryError> {
        let report = |p: PullProgress| {
            if let Some(tx) = progress {
                let _ = tx.send(p);
            }
        };
        let parsed = skiff_image::parse_reference(reference)?;
        let stored = parsed.normalized();
        if let Some(d) = &parsed.digest {
            // A digest names one content: when the store holds it (built, pushed, imported
            // or pulled before) there is nothing to fetch, and the registry is not asked. This
            // is how an image built by `gcloud run deploy --source`, which gcloud names
            // `REGION-docker.pkg.dev/P/cloud-run-source-deploy/NAME@DIGEST`, is found.
            if self.store.resolve(d).is_ok() {
                report(PullProgress::Resolved {
                    digest: d.clone(),
                    blobs: 0,
                    cached: 0,
                });
                return Ok(Pulled {
                    reference: stored,
                    digest: d.clone(),
                    blobs: 0,
                    downloaded: 0,
                    downloaded_bytes: 0,
                });
            }
        }
        let r: Reference = reference.parse().map_err(|e: oci_client::ParseError| {
            RegistryError::InvalidReference {
                input: reference.to_string(),
                reason: e.to_string(),
            }
        })?;
        let registry = r.resolve_registry().to_string();
        let settings = self.registries.settings_for(&registry)?;
        let transport = crate::login::transport(&registry, &settings).await;
        let client = client_for(&registry, &settings, transport)?;
        let auth = match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            _ => RegistryAuth::Anonymous,
        };
        let fail = |e| classify(e, &registry, reference);

        let (mut bytes, mut digest) = client
            .pull_manifest_raw(&r, &auth, ACCEPT)
            .await
            .map_err(fail)?;
        let mut r = r;
        let kind = media_type(&bytes, reference)?;
        if kind == MT_OCI_INDEX || kind == MT_DOCKER_LIST {
            let chosen = choose_platform(&bytes, reference)?;
            r = r.clone_with_digest(chosen.clone());
            (bytes, digest) = client
                .pull_manifest_raw(&r, &auth, ACCEPT)
                .await
                .map_err(fail)?;
            let kind = media_type(&bytes, reference)?;
            if kind == MT_OCI_INDEX || kind == MT_DOCKER_LIST {
                return Err(RegistryError::Unsupported {
                    reference: reference.to_string(),
                    reason: "its index points at another index".into(),
                });
            }
        }
        let kind = media_type(&bytes, reference)?;
        if self.store.resolve(&digest).is_ok() {
            // The store has this very image (pulled, pushed or imported before): only the
            // reference is recorded, nothing is downloaded or unpacked again.
            let tagged = self.store.tag(&stored, &digest, ImageSource::Pulled)?;
            report(PullProgress::Resolved {
                digest: digest.clone(),
                blobs: 0,
                cached: 0,
            });
            return Ok(Pulled {
                reference: tagged.reference,
                digest,
                blobs: 0,
                downloaded: 0,
                downloaded_bytes: 0,
            });
        }
        let manifest: ManifestDoc =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Unsupported {
                reference: reference.to_string(),
                reason: format!("its manifest does not parse ({e})"),
            })?;

        // Garbage collection waits while this download is staged.
        let staging = self.store.staging("pull-")?;
        let layout = staging.path();
        write_layout(layout, &bytes, &digest, &kind)?;

        let mut blobs: Vec<Blob> = Vec::new();
        for b in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !blobs.iter().any(|x| x.digest == b.digest) {
                blobs.push(b.clone());
            }
        }
        let mut to_fetch = Vec::new();
        for b in &blobs {
            let dest = blob_path(layout, &b.digest, reference)?;
            let linked = match self.store.stored_blob(&b.digest) {
                Some(have) => std::fs::hard_link(&have, &dest)
                    .or_else(|_| std::fs::copy(&have, &dest).map(|_| ()))
                    .is_ok(),
                None => false,
            };
            if !linked {
                to_fetch.push((b.clone(), dest));
            }
        }
        let downloaded = to_fetch.len();
        let downloaded_bytes: u64 = to_fetch.iter().map(|(b, _)| b.size.max(0) as u64).sum();
        tracing::info!(
            %reference, %digest, blobs = blobs.len(), downloading = downloaded,
            bytes = downloaded_bytes, "pulling image"
        );
        report(PullProgress::Resolved {
            digest: digest.clone(),
            blobs: blobs.len(),
            cached: blobs.len() - downloaded,
        });
        futures::stream::iter(to_fetch)
            .map(|(b, dest)| {
                let (client, r, registry) = (&client, &r, &registry);
                async move {
                    download_blob(client, r, &b, &dest, reference, progress)
                        .await
                        .map_err(|e| match e {
                            Fetch::Oci(e) => classify(e, registry, reference),
                            Fetch::Other(e) => e,
                        })
                }
            })
            .buffer_unordered(CONCURRENT_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        report(PullProgress::Unpacking);

        let store = self.store.clone();
        let imported = tokio::task::spawn_blocking(move || {
            let res = store.import_pulled(staging.path(), &stored, ImageSource::Pulled);
            drop(staging);
            res
        })
        .await
        .map_err(|e| RegistryError::Registry {
            reference: reference.to_string(),
            reason: format!("the import task failed ({e})"),
        })??;
        if imported.digest != digest {
            return Err(RegistryError::Registry {
                reference: reference.to_string(),
                reason: format!(
                    "the stored manifest {} is not the one pulled ({digest})",
                    imported.digest
                ),
            });
        }
        Ok(Pulled {
            reference: imported.reference,
            digest,
            blobs: blobs.len(),
            downloaded,
            downloaded_bytes,
        })
    }
}

/// Why a blob download failed: the registry (classified by the caller) or anything else.
enum Fetch {
    Oci(OciDistributionError),
    Other(RegistryError),
}

/// Download the blob `b` into `dest`, resuming with a `Range` request after a connection cut
/// off part-way (up to [`DOWNLOAD_ATTEMPTS`] in all, while each attempt brings new bytes),
/// hashing as it writes; the file is complete and matches `b`'s digest and size on success.
async fn download_blob(
    client: &Client,
    r: &Reference,
    b: &Blob,
    dest: &Path,
    reference: &str,
    progress: Option<&ProgressSink>,
) -> Result<(), Fetch> {
    let desc = OciDescriptor {
        media_type: b.media_type.clone(),
        digest: b.digest.clone(),
        size: b.size,
        urls: None,
        annotations: None,
    };
    let size = b.size.max(0) as u64;
    let report = |downloaded: u64, done: bool| {
        if let Some(tx) = progress {
            let _ = tx.send(PullProgress::Blob {
                digest: b.digest.clone(),
                size,
                downloaded,
                done,
            });
        }
    };
    let io = |what: &str, e| {
        Fetch::Other(RegistryError::io(
            format!("cannot {what} {}", dest.display()),
            e,
        ))
    };
    let mut f = tokio::fs::File::create(dest)
        .await
        .map_err(|e| io("create", e))?;
    let mut hasher = Sha256::new();
    let mut have: u64 = 0;
    let mut attempt = 1;
    report(0, false);
    loop {
        let started_at = have;
        let response = if have == 0 {
            client
                .pull_blob_stream(r, &desc)
                .await
                .map(oci_client::client::BlobResponse::Full)
        } else {
            client.pull_blob_stream_partial(r, &desc, have, None).await
        };
        // Whether the registry answered and then sent nothing before the cut.
        let mut answered = false;
        let cut = match response {
            Err(e) if attempt == 1 => return Err(Fetch::Oci(e)),
            Err(e) => Some(e.to_string()),
            Ok(resp) => {
                answered = true;
                let mut stream = match resp {
                    oci_client::client::BlobResponse::Partial(s) => s.stream,
                    oci_client::client::BlobResponse::Full(s) => {
                        // The registry ignored the range: start over.
                        if have > 0 {
                            f.set_len(0).await.map_err(|e| io("truncate", e))?;
                            f.seek(std::io::SeekFrom::Start(0))
                                .await
                                .map_err(|e| io("rewind", e))?;
                            hasher = Sha256::new();
                            have = 0;
                        }
                        s.stream
                    }
                };
                let mut reported = have;
                let mut cut = None;
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(bytes) => {
                            hasher.update(&bytes);
                            f.write_all(&bytes).await.map_err(|e| io("write", e))?;
                            have += bytes.len() as u64;
                            if have - reported >= PROGRESS_STEP {
                                reported = have;
                                report(have, false);
                            }
                        }
                        Err(e) => {
                            cut = Some(chain(&e));
                            break;
                        }
                    }
                }
                cut
            }
        };
        let Some(reason) = cut else { break };
        if size > 0 && have >= size {
            // Every byte is here (the error came after the last one, or is the stream's own
            // digest check): the check below decides.
            break;
        }
        // An answer cut off before its first byte, or too many cuts, end the download.
        if attempt >= DOWNLOAD_ATTEMPTS || (answered && have == started_at) {
            return Err(Fetch::Other(RegistryError::Registry {
                reference: reference.to_string(),
                reason: format!(
                    "downloading blob {} stopped at byte {have} of {size} after {attempt} attempts: {reason}",
                    b.digest
                ),
            }));
        }
        attempt += 1;
        tracing::info!(blob = %b.digest, from = have, attempt, %reason, "blob download cut off; resuming");
        if let Some(tx) = progress {
            let _ = tx.send(PullProgress::Resumed {
                digest: b.digest.clone(),
                from: have,
                attempt,
            });
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    f.flush().await.map_err(|e| io("write", e))?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != b.digest || (b.size >= 0 && have != size) {
        return Err(Fetch::Oci(OciDistributionError::DigestError(
            oci_client::errors::DigestError::VerificationError {
                expected: b.digest.clone(),
                actual: format!("{actual} ({have} bytes)"),
            },
        )));
    }
    report(have, true);
    Ok(())
}

/// An `oci-client` client for one registry over `transport` ([`crate::login::transport`]):
/// HTTPS with the registry's CA file trusted too, HTTPS accepting any certificate for an
/// insecure registry that serves HTTPS, or plain HTTP.
fn client_for(
    registry: &str,
    s: &RegistrySettings,
    transport: crate::login::Transport,
) -> Result<Client, RegistryError> {
    let (protocol, accept_invalid_certificates) = match transport {
        crate::login::Transport::Http => (ClientProtocol::Http, false),
        crate::login::Transport::Https { verify } => (ClientProtocol::Https, !verify),
    };
    let mut extra_root_certificates = Vec::new();
    if let Some(ca) = &s.ca_file {
        let data = std::fs::read(ca).map_err(|e| {
            RegistryError::io(
                format!(
                    "cannot read the CA file {} of registry {registry}",
                    ca.display()
                ),
                e,
            )
        })?;
        extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates,
        extra_root_certificates,
        platform_resolver: None,
        max_concurrent_download: CONCURRENT_DOWNLOADS,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("skiff/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }))
}

fn media_type(bytes: &[u8], reference: &str) -> Result<String, RegistryError> {
    let v: Versioned = serde_json::from_slice(bytes).map_err(|e| RegistryError::Unsupported {
        reference: reference.to_string(),
        reason: format!("its manifest is not JSON ({e})"),
    })?;
    match (v.schema_version, v.media_type.as_deref()) {
        (_, Some(MT_DOCKER_V1_SIGNED)) | (Some(1), _) => Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            reason: "it has a Docker schema 1 manifest; push it again with a current tool".into(),
        }),
        (_, Some(mt @ (MT_OCI_INDEX | MT_OCI_MANIFEST | MT_DOCKER_LIST | MT_DOCKER_MANIFEST))) => {
            Ok(mt.to_string())
        }
        (_, Some(other)) => Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            reason: format!("its manifest has media type {other:?}"),
        }),
        // OCI allows the media type to be left out; an index has `manifests`.
        (_, None) => {
            let probe: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            Ok(if probe.get("manifests").is_some() {
                MT_OCI_INDEX
            } else {
                MT_OCI_MANIFEST
            }
            .to_string())
        }
    }
}

/// The digest of the index entry for linux and this host's architecture.
fn choose_platform(bytes: &[u8], reference: &str) -> Result<String, RegistryError> {
    let index: IndexDoc =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Unsupported {
            reference: reference.to_string(),
            reason: format!("its image index does not parse ({e})"),
        })?;
    // The only entry naming no platform is taken, as containerd takes it; one naming
    // another platform is refused, even when it is the only one.
    if let [only] = index.manifests.as_slice() {
        if only.platform.is_none() {
            return Ok(only.digest.clone());
        }
    }
    let arch = host_arch();
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .map(|m| m.digest.clone())
        .ok_or_else(|| {
            let available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            RegistryError::NoPlatform {
                reference: reference.to_string(),
                wanted: format!("linux/{arch}"),
                available: if available.is_empty() {
                    "no platforms listed".into()
                } else {
                    available.join(", ")
                },
            }
        })
}

fn blob_path(
    layout: &Path,
    digest: &str,
    reference: &str,
) -> Result<std::path::PathBuf, RegistryError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(layout.join("blobs/sha256").join(hex))
        }
        _ => Err(RegistryError::Unsupported {
            reference: reference.to_string(),
            reason: format!(
                "its manifest names the blob {digest:?}; only sha256 digests are supported"
            ),
        }),
    }
}

/// An OCI image layout holding just the manifest; blobs are added beside it.
fn write_layout(
    layout: &Path,
    manifest: &[u8],
    digest: &str,
    media_type: &str,
) -> Result<(), RegistryError> {
    let io = |e| {
        RegistryError::io(
            format!("cannot write the staging layout {}", layout.display()),
            e,
        )
    };
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(io)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io)?;
    let path = blob_path(layout, digest, digest)?;
    std::fs::write(path, manifest).map_err(io)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": media_type, "digest": digest, "size": manifest.len()}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(io)
}

/// Turn an `oci-client` error into one that says what to do.
fn classify(e: OciDistributionError, registry: &str, reference: &str) -> RegistryError {
    let unauthorized = |reason: String| RegistryError::Unauthorized {
        registry: registry.to_string(),
        reference: reference.to_string(),
        reason,
    };
    let not_found = || RegistryError::NotFound {
        reference: reference.to_string(),
    };
    match e {
        OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
            RegistryError::Unreachable {
                registry: registry.to_string(),
                reason: chain(&re),
            }
        }
        OciDistributionError::UnauthorizedError { .. } => {
            unauthorized("it asks for credentials (401)".into())
        }
        OciDistributionError::AuthenticationFailure(m) => {
            unauthorized(format!("its token service said {:?}", m.trim()))
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let message = envelope
                .errors
                .iter()
                .map(|e| e.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(message)
            } else {
                RegistryError::Registry {
                    reference: reference.to_string(),
                    reason: message,
                }
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::ServerError {
            code: 401 | 403,
            message,
            ..
        } => unauthorized(message.trim().to_string()),
        OciDistributionError::DigestError(d) => RegistryError::Registry {
            reference: reference.to_string(),
            reason: format!("the registry sent content that does not match its digest ({d})"),
        },
        OciDistributionError::RequestError(re) => RegistryError::Registry {
            reference: reference.to_string(),
            reason: chain(&re),
        },
        other => RegistryError::Registry {
            reference: reference.to_string(),
            reason: other.to_string(),
        },
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references() {
        for yes in [
            "127.0.0.1:5000/app",
            "localhost/app:v1",
            "registry.example.com/team/app@sha256:abc",
            "[::1]:5000/app",
        ] {
            assert!(is_registry_reference(yes), "{yes}");
        }
        for no in [
            "busybox",
            "web:latest",
            "team/app",
            "docker.io/library/busybox",
            "x",
        ] {
            assert!(!is_registry_reference(no), "{no}");
        }
    }

    #[test]
    fn loopback_registries() {
        for yes in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn platform_choice_and_media_types() {
        let arch = host_arch();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [
                {"digest": "sha256:aa", "platform": {"os": "windows", "architecture": arch}},
                {"digest": "sha256:bb", "platform": {"os": "linux", "architecture": "s390x"}},
                {"digest": "sha256:cc", "platform": {"os": "linux", "architecture": arch}},
            ]
        })
        .to_string();
        assert_eq!(media_type(index.as_bytes(), "r").unwrap(), MT_OCI_INDEX);
        assert_eq!(choose_platform(index.as_bytes(), "r").unwrap(), "sha256:cc");
        let none = r#"{"manifests":[{"digest":"sha256:bb","platform":{"os":"linux","architecture":"s390x"}}]}"#;
        assert_eq!(media_type(none.as_bytes(), "r").unwrap(), MT_OCI_INDEX);
        let e = choose_platform(none.as_bytes(), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("linux/s390x") && e.contains(arch), "{e}");
        let bare = r#"{"manifests":[{"digest":"sha256:dd"}]}"#;
        assert_eq!(choose_platform(bare.as_bytes(), "r").unwrap(), "sha256:dd");
        let v1 = r#"{"schemaVersion":1,"name":"x"}"#;
        assert!(media_type(v1.as_bytes(), "r")
            .unwrap_err()
            .to_string()
            .contains("schema 1"));
        let art = r#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart"}"#;
        assert!(media_type(art.as_bytes(), "r").is_err());
    }
}
