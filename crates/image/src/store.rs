//! `ImageStore`: the content-addressed store on disk. Import stages verified blobs and
//! unpacked layers under `ROOT/tmp` and `ROOT/layers/.tmp-*`, then renames them into place and
//! records the reference; delete removes references and garbage-collects what no reference or
//! pinned digest reaches; resolve turns a reference into layer directories and config.
//!
//! Locking: `gc.lock` is held shared by import, list and resolve and exclusively by delete
//! (so garbage collection never races an import); `refs.lock` serializes read-modify-write of
//! `refs.json`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::compression::{self, Compression};
use crate::content::{AnyManifest, ManifestKind, EMPTY_DIGEST};
use crate::digest::{hex_of, is_hex64, sha256_digest, HashingReader, HashingWriter};
use crate::error::{ImageError, IoContext};
use crate::import::{self, LayerPlan, ManifestPlan, Plan};
use crate::oci::{self, Descriptor, ImageConfig, Manifest};
use crate::reference::{parse_digest, parse_reference};
use crate::refs;
use crate::source::Source;
use crate::unpack;
use crate::{ImageInfo, ImageSource, ImportedImage, ResolvedImage};

const GC_LOCK: &str = "gc.lock";
const REFS_LOCK: &str = "refs.lock";
const LAYER_TMP_PREFIX: &str = ".tmp-";
/// Largest manifest or config read back from the store.
const JSON_LIMIT: u64 = 16 << 20;

/// A staging directory that holds off garbage collection while it lives (see
/// [`ImageStore::staging`]).
pub struct Staging {
    dir: TempDir,
    _lock: refs::Lock,
}

impl Staging {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Blobs (manifests, configs, compressed layers) deleted.
    pub blobs: usize,
    /// Unpacked layer directories deleted.
    pub layers: usize,
    /// Bytes of deleted blobs (unpacked layers not counted).
    pub bytes: u64,
}

/// A content-addressed image store rooted at a directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// A blob brought into staging (or found already in the store).
struct StagedBlob {
    digest: String,
    size: u64,
    compression: Compression,
    /// Where to read the blob now.
    path: PathBuf,
    /// Set when the blob is in staging and must be moved into the store on commit.
    staged: bool,
}

impl ImageStore {
    /// Open (creating as needed) the store at `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs").join("sha256"),
            root.join("layers"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&dir)
                .ctx(|| format!("cannot create image store directory {}", dir.display()))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs").join("sha256").join(hex_of(digest))
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn layer_path(&self, diff_id: &str) -> PathBuf {
        self.layers_dir().join(hex_of(diff_id))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new directory under `layers/` for a layer being unpacked (renamed into place when
    /// done), removed when dropped.
    fn layer_tmp_dir(&self) -> Result<tempfile::TempDir, ImageError> {
        tempfile::Builder::new()
            .prefix(LAYER_TMP_PREFIX)
            .tempdir_in(self.layers_dir())
            .ctx(|| {
                format!(
                    "cannot create a directory in {}",
                    self.layers_dir().display()
                )
            })
    }

    /// A new directory under the store's `tmp`, named `PREFIX...`, removed when dropped.
    fn staging_dir(&self, prefix: &str) -> Result<tempfile::TempDir, ImageError> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp_dir())
            .ctx(|| {
                format!(
                    "cannot create a staging directory in {}",
                    self.tmp_dir().display()
                )
            })
    }

    /// The store lost something an image needs; the fix is to import the image again.
    fn corrupt(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Corrupt {
            root: self.root.display().to_string(),
            reason: format!("{}; delete the image and import it again", reason.into()),
        }
    }

    /// Import the image at `path` (OCI layout directory, OCI archive or docker archive).
    /// `name` (`NAME[:TAG]`) overrides the archive's own reference; without it the archive
    /// must name the image. Nothing is referenced unless every blob and layer verified and
    /// unpacked safely.
    pub fn import(&self, path: &Path, name: Option<&str>) -> Result<ImportedImage, ImageError> {
        let name = match name {
            Some(n) => {
                let r = parse_reference(n)?;
                if r.digest.is_some() {
                    return Err(ImageError::InvalidReference {
                        input: n.to_string(),
                        reason: "an image cannot be imported under a digest; give NAME[:TAG]"
                            .into(),
                    });
                }
                Some(r)
            }
            None => None,
        };
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let src = Source::open(path, &self.tmp_dir())?;
        let plan = import::plan(&src, name.as_ref())?;
        self.apply(&src, plan, None, ImageSource::Imported)
    }

    /// Import the OCI image layout at `layout` (what a registry pull staged) under
    /// `reference`, which may pin a digest (`NAME@sha256:HEX`, stored under that very key);
    /// the layout's manifest must then have that digest; `source` says how it came (pulled,
    /// pushed or built). Otherwise as [`ImageStore::import`].
    pub fn import_pulled(
        &self,
        layout: &Path,
        reference: &str,
        source: ImageSource,
    ) -> Result<ImportedImage, ImageError> {
        let r = parse_reference(reference)?;
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let src = Source::open(layout, &self.tmp_dir())?;
        let plan = import::plan(&src, Some(&r))?;
        self.apply(&src, plan, r.digest.as_deref(), source)
    }

    /// Record `reference` (`NAME:TAG` or `NAME@sha256:HEX`) for the image with manifest
    /// `digest`, which must already be in the store and resolve (a pull of an image the store
    /// has under another name, or again after its tag moved back). Errors: `NotFound` when the
    /// store lacks the image, `InvalidReference`. `source` is recorded as where the
    /// reference came from.
    pub fn tag(
        &self,
        reference: &str,
        digest: &str,
        source: ImageSource,
    ) -> Result<ImportedImage, ImageError> {
        let key = parse_reference(reference)?.normalized();
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        self.lookup(digest)?;
        let _refs = refs::lock(&self.root, REFS_LOCK, true)?;
        let mut table = refs::load(&self.root)?;
        table.insert(key.clone(), digest.to_string());
        refs::save_with_source(&self.root, &table, Some((&key, source)))?;
        Ok(ImportedImage {
            reference: key,
            digest: digest.to_string(),
        })
    }

    /// The stored blob with `digest` (`sha256:HEX`), when the store holds it: a pull links it
    /// instead of downloading it again.
    pub fn stored_blob(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        if !is_hex64(hex) {
            return None;
        }
        let p = self.blob_path(digest);
        p.is_file().then_some(p)
    }

    /// The manifest digest `reference` (`NAME[:TAG]`, `NAME@sha256:HEX` or a bare digest)
    /// stands for, when the store has that image. Errors: `NotFound`, `InvalidReference`.
    pub fn digest_of(&self, reference: &str) -> Result<String, ImageError> {
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        self.lookup(reference)
    }

    /// A fresh directory under the store's `tmp/` for a pull to stage its download in (inside
    /// the store, so that blobs can be hard-linked). While the returned guard lives, garbage
    /// collection (delete, prune) waits, so it never sweeps a download in progress; dropping
    /// the guard removes the directory.
    pub fn staging(&self, prefix: &str) -> Result<Staging, ImageError> {
        let lock = refs::lock(&self.root, GC_LOCK, false)?;
        let dir = self.staging_dir(prefix)?;
        Ok(Staging { dir, _lock: lock })
    }

    /// Store the manifest or index `bytes` verbatim under `reference` (`NAME:TAG` or
    /// `NAME@sha256:HEX`, which must then be the digest of `bytes`), for what a registry push
    /// brings that is not imported as a runnable image: image indexes and Docker manifest
    /// lists, artifacts, and images whose layers are kept without unpacking. Every manifest an
    /// index lists must already be in the store; every blob a manifest names must be in the
    /// store, in `blobs` (digest, path of its verified content, hashed again as it is copied
    /// in) or be the OCI empty descriptor `{}`. A `subject` need not exist (the distribution
    /// spec lets referrers be pushed before their subject). Errors: `MissingContent`,
    /// `DigestMismatch`, `NotAnImage` for a document that is no manifest, `InvalidReference`.
    pub fn put_content(
        &self,
        reference: &str,
        bytes: &[u8],
        blobs: &[(String, PathBuf)],
        source: ImageSource,
    ) -> Result<ImportedImage, ImageError> {
        let r = parse_reference(reference)?;
        let key = r.normalized();
        let digest = sha256_digest(bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(ImageError::DigestMismatch {
                    what: "manifest".into(),
                    digest: want.clone(),
                    actual: digest,
                });
            }
        }
        let not_manifest = |reason: String| ImageError::NotAnImage {
            path: key.clone(),
            reason,
        };
        let m = AnyManifest::parse(bytes).map_err(&not_manifest)?;
        let kind = m.kind().map_err(&not_manifest)?;
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let staging = self.staging_dir("content-")?;
        let mut staged: Vec<StagedBlob> = Vec::new();
        if kind == ManifestKind::Index {
            for child in m.children() {
                parse_digest(&child.digest)?;
                if !self.blob_path(&child.digest).is_file() {
                    return Err(ImageError::MissingContent {
                        what: "manifest".into(),
                        digest: child.digest.clone(),
                    });
                }
            }
        } else {
            for (i, d) in m.blobs().into_iter().enumerate() {
                parse_digest(&d.digest)?;
                if self.blob_path(&d.digest).is_file() || d.is_non_distributable() {
                    continue;
                }
                let dest = staging.path().join(format!("blob-{i}"));
                let (actual, size) = if d.digest == EMPTY_DIGEST {
                    fs::write(&dest, b"{}").ctx(|| format!("cannot write {}", dest.display()))?;
                    (EMPTY_DIGEST.to_string(), 2)
                } else {
                    let Some((_, src)) = blobs.iter().find(|(bd, _)| *bd == d.digest) else {
                        return Err(ImageError::MissingContent {
                            what: "blob".into(),
                            digest: d.digest.clone(),
                        });
                    };
                    let f = File::open(src).ctx(|| format!("cannot open {}", src.display()))?;
                    write_hashed(f, &dest).ctx(|| format!("cannot copy {}", src.display()))?
                };
                if actual != d.digest {
                    return Err(ImageError::DigestMismatch {
                        what: "blob".into(),
                        digest: d.digest.clone(),
                        actual,
                    });
                }
                staged.push(StagedBlob {
                    digest: actual,
                    size,
                    compression: Compression::None,
                    path: dest,
                    staged: true,
                });
            }
        }
        staged.push(self.stage_bytes(bytes, &staging.path().join("manifest"))?);
        for blob in &staged {
            let dest = self.blob_path(&blob.digest);
            if blob.staged && !dest.exists() {
                fs::rename(&blob.path, &dest)
                    .ctx(|| format!("cannot store blob {}", blob.digest))?;
            }
        }
        self.sync()?;
        {
            let _refs = refs::lock(&self.root, REFS_LOCK, true)?;
            let mut table = refs::load(&self.root)?;
            table.insert(key.clone(), digest.clone());
            // The index's entries pushed by digest to its repository live as long as
            // something reaches them (the index, while it is kept), not on their own.
            let children: Vec<String> = if kind == ManifestKind::Index {
                m.children()
                    .iter()
                    .map(|c| format!("{}@{}", r.name, c.digest))
                    .filter(|k| *k != key && table.contains_key(k))
                    .collect()
            } else {
                Vec::new()
            };
            refs::mark_index_children(&self.root, &table, Some((&key, source)), &children)?;
        }
        tracing::info!(reference = %key, %digest, ?kind, "stored manifest");
        Ok(ImportedImage {
            reference: key,
            digest,
        })
    }

    /// The kind of the manifest stored under `reference` (a `NAME[:TAG]`, `NAME@sha256:HEX` or
    /// bare digest), with its bytes. Errors: `NotFound`, `InvalidReference`, `Corrupt`.
    pub fn manifest(&self, reference: &str) -> Result<(ManifestKind, Vec<u8>), ImageError> {
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let digest = self.lookup(reference)?;
        let bytes = self.read_blob(&digest, "manifest")?;
        let kind = AnyManifest::parse(&bytes)
            .and_then(|m| m.kind())
            .map_err(|e| self.corrupt(format!("manifest {digest}: {e}")))?;
        Ok((kind, bytes))
    }

    fn apply(
        &self,
        src: &Source,
        plan: Plan,
        want_digest: Option<&str>,
        source: ImageSource,
    ) -> Result<ImportedImage, ImageError> {
        let staging = self.staging_dir("import-")?;

        // 1. Copy every layer blob, verifying digest and size.
        let mut blobs = Vec::with_capacity(plan.layers.len());
        for (i, layer) in plan.layers.iter().enumerate() {
            blobs.push(self.stage_layer_blob(
                src,
                layer,
                &staging.path().join(format!("layer-{i}")),
            )?);
        }

        // 2. Unpack each layer not yet in the store (once, even if listed twice), always
        //    verifying the diff_id.
        let mut unpacked: Vec<(TempDir, PathBuf)> = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for (layer, blob) in plan.layers.iter().zip(&blobs) {
            let target = self.layer_path(&layer.diff_id);
            let actual = if done.contains(&layer.diff_id) || target.is_dir() {
                unpack::diff_id(&blob.path, &blob.digest)?
            } else {
                let tmp = self.layer_tmp_dir()?;
                let actual = unpack::unpack_layer(&blob.path, &blob.digest, tmp.path())?;
                unpacked.push((tmp, target));
                actual
            };
            if actual != layer.diff_id {
                return Err(ImageError::DiffIdMismatch {
                    layer: blob.digest.clone(),
                    expected: layer.diff_id.clone(),
                    actual,
                });
            }
            done.insert(layer.diff_id.clone());
        }

        // 3. Config and manifest.
        let config = self.stage_bytes(&plan.config, &staging.path().join("config"))?;
        if config.digest != plan.config_digest {
            return Err(ImageError::DigestMismatch {
                what: "config".into(),
                digest: plan.config_digest.clone(),
                actual: config.digest,
            });
        }
        let manifest_bytes = match &plan.manifest {
            ManifestPlan::Verbatim { bytes, .. } => bytes.clone(),
            ManifestPlan::Synthesize => synthesize_manifest(&config, &blobs)?,
        };
        let manifest = self.stage_bytes(&manifest_bytes, &staging.path().join("manifest"))?;
        if let ManifestPlan::Verbatim { digest, .. } = &plan.manifest {
            if *digest != manifest.digest {
                return Err(ImageError::DigestMismatch {
                    what: "manifest".into(),
                    digest: digest.clone(),
                    actual: manifest.digest,
                });
            }
        }

        if let Some(want) = want_digest {
            if want != manifest.digest {
                return Err(ImageError::DigestMismatch {
                    what: "manifest".into(),
                    digest: want.to_string(),
                    actual: manifest.digest,
                });
            }
        }

        // 4. Commit: blobs, then layers, then make it durable, then the reference.
        for blob in blobs.iter().chain([&config, &manifest]) {
            if blob.staged {
                let dest = self.blob_path(&blob.digest);
                if !dest.exists() {
                    fs::rename(&blob.path, &dest)
                        .ctx(|| format!("cannot store blob {}", blob.digest))?;
                }
            }
        }
        for (tmp, target) in unpacked {
            match fs::rename(tmp.path(), &target) {
                Ok(()) => {
                    let _ = tmp.keep();
                }
                // Another import unpacked the same layer meanwhile; ours is dropped.
                Err(_) if target.is_dir() => {}
                Err(e) => {
                    return Err(ImageError::io(
                        format!("cannot move layer into {}", target.display()),
                        e,
                    ))
                }
            }
        }
        self.sync()?;
        {
            let _refs = refs::lock(&self.root, REFS_LOCK, true)?;
            let mut table = refs::load(&self.root)?;
            table.insert(plan.reference.clone(), manifest.digest.clone());
            refs::save_with_source(&self.root, &table, Some((&plan.reference, source)))?;
        }
        tracing::info!(reference = %plan.reference, digest = %manifest.digest, "imported image");
        Ok(ImportedImage {
            reference: plan.reference,
            digest: manifest.digest,
        })
    }

    /// Flush everything written under the root to disk.
    fn sync(&self) -> Result<(), ImageError> {
        let dir = File::open(&self.root).ctx(|| format!("cannot open {}", self.root.display()))?;
        nix::unistd::syncfs(dir.as_raw_fd())
            .map_err(|e| ImageError::io(format!("cannot sync {}", self.root.display()), e.into()))
    }

    /// Copy a layer blob from the source into staging (or just hash it when the store already
    /// holds the digest it claims), verifying digest and size.
    fn stage_layer_blob(
        &self,
        src: &Source,
        layer: &LayerPlan,
        staged_path: &Path,
    ) -> Result<StagedBlob, ImageError> {
        let what = format!("layer {}", layer.path);
        let Some((reader, len)) = src.open_file(&layer.path)? else {
            return Err(ImageError::MissingBlob {
                path: src.display.clone(),
                what: "layer".into(),
                digest: layer.digest.clone().unwrap_or_else(|| layer.path.clone()),
            });
        };
        let name = || layer.digest.clone().unwrap_or_else(|| layer.path.clone());
        if let Some(expected) = layer.size {
            if expected != len {
                return Err(ImageError::SizeMismatch {
                    what: "layer".into(),
                    digest: name(),
                    expected,
                    actual: len,
                });
            }
        }
        let check = |actual: &str| -> Result<(), ImageError> {
            match &layer.digest {
                Some(d) if d != actual => Err(ImageError::DigestMismatch {
                    what: "layer".into(),
                    digest: d.clone(),
                    actual: actual.to_string(),
                }),
                _ => Ok(()),
            }
        };
        if let Some(d) = &layer.digest {
            let existing = self.blob_path(d);
            if existing.is_file() {
                let (actual, size) = HashingReader::new(reader)
                    .finish()
                    .ctx(|| format!("cannot read {what} of {}", src.display))?;
                check(&actual)?;
                return Ok(StagedBlob {
                    digest: actual,
                    size,
                    compression: sniff(&existing, d)?,
                    path: existing,
                    staged: false,
                });
            }
        }
        let (actual, size) = write_hashed(reader, staged_path)
            .ctx(|| format!("cannot copy {what} of {} into the store", src.display))?;
        check(&actual)?;
        let compression = sniff(staged_path, &actual)?;
        let existing = self.blob_path(&actual);
        if existing.is_file() {
            let _ = fs::remove_file(staged_path);
            return Ok(StagedBlob {
                digest: actual,
                size,
                compression,
                path: existing,
                staged: false,
            });
        }
        Ok(StagedBlob {
            digest: actual,
            size,
            compression,
            path: staged_path.to_path_buf(),
            staged: true,
        })
    }

    /// Write bytes to staging and describe them as a blob.
    fn stage_bytes(&self, bytes: &[u8], staged_path: &Path) -> Result<StagedBlob, ImageError> {
        let digest = sha256_digest(bytes);
        let existing = self.blob_path(&digest);
        if existing.is_file() {
            return Ok(StagedBlob {
                digest,
                size: bytes.len() as u64,
                compression: Compression::None,
                path: existing,
                staged: false,
            });
        }
        fs::write(staged_path, bytes).ctx(|| format!("cannot write {}", staged_path.display()))?;
        Ok(StagedBlob {
            digest,
            size: bytes.len() as u64,
            compression: Compression::None,
            path: staged_path.to_path_buf(),
            staged: true,
        })
    }

    /// Every reference with its digest, size and creation time, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let table = refs::load(&self.root)?;
        let sources = refs::load_sources(&self.root)?;
        let mut out = Vec::with_capacity(table.len());
        for (reference, digest) in table {
            let (size, created) = match self.describe(&digest) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%reference, %digest, error = %e, "cannot read image");
                    (0, None)
                }
            };
            out.push(ImageInfo {
                source: sources.get(&reference).copied(),
                reference,
                digest,
                size,
                created,
            });
        }
        Ok(out)
    }

    /// Size (the manifest and what it names, as their descriptors give it) and creation time
    /// (an image config's `created`) of a stored manifest or index.
    fn describe(&self, digest: &str) -> Result<(u64, Option<String>), ImageError> {
        let bytes = self.read_blob(digest, "manifest")?;
        let m = AnyManifest::parse(&bytes)
            .map_err(|e| self.corrupt(format!("manifest {digest}: {e}")))?;
        let named: u64 = m.blobs().iter().map(|d| d.size).sum::<u64>()
            + m.children().iter().map(|d| d.size).sum::<u64>();
        let size = bytes.len() as u64 + named;
        if m.kind() != Ok(ManifestKind::Image) {
            return Ok((size, None));
        }
        let (manifest, _) = self.read_manifest(digest)?;
        let config = self.read_config(&manifest.config)?;
        Ok((size, config.created))
    }

    fn read_blob(&self, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        parse_digest(digest)
            .map_err(|_| self.corrupt(format!("{what} digest {digest:?} is malformed")))?;
        let path = self.blob_path(digest);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(self.corrupt(format!("{what} blob {digest} is missing")))
            }
            Err(e) => return Err(ImageError::io(format!("cannot open {}", path.display()), e)),
        };
        let mut buf = Vec::new();
        f.take(JSON_LIMIT)
            .read_to_end(&mut buf)
            .ctx(|| format!("cannot read {}", path.display()))?;
        Ok(buf)
    }

    fn read_manifest(&self, digest: &str) -> Result<(Manifest, u64), ImageError> {
        let bytes = self.read_blob(digest, "manifest")?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                what: format!("stored manifest {digest}"),
                source,
            })?;
        Ok((manifest, bytes.len() as u64))
    }

    fn read_config(&self, desc: &Descriptor) -> Result<ImageConfig, ImageError> {
        let bytes = self.read_blob(&desc.digest, "config")?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            what: format!("stored image config {}", desc.digest),
            source,
        })
    }

    /// The manifest digest a reference (or bare `sha256:` digest) stands for.
    fn lookup(&self, reference: &str) -> Result<String, ImageError> {
        let not_found = || ImageError::NotFound {
            reference: reference.to_string(),
        };
        let digest = if reference.starts_with("sha256:") {
            parse_digest(reference)?
        } else {
            let r = parse_reference(reference)?;
            match r.digest {
                Some(d) => d,
                None => refs::load(&self.root)?
                    .get(&r.normalized())
                    .cloned()
                    .ok_or_else(not_found)?,
            }
        };
        if !self.blob_path(&digest).is_file() {
            return Err(not_found());
        }
        Ok(digest)
    }

    /// Resolve `NAME[:TAG]`, `NAME@sha256:HEX` or a bare `sha256:HEX` manifest digest to
    /// layer directories and run configuration.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let _gc = refs::lock(&self.root, GC_LOCK, false)?;
        let mut digest = self.lookup(reference)?;
        // An index resolves to its entry for this machine's platform (one level, as an index
        // of indexes is not something image tools write for runnable images).
        let bytes = self.read_blob(&digest, "manifest")?;
        let m = AnyManifest::parse(&bytes)
            .map_err(|e| self.corrupt(format!("manifest {digest}: {e}")))?;
        let not_runnable = |reason: String| ImageError::NotRunnable {
            reference: reference.to_string(),
            reason,
        };
        let kind = m.kind().map_err(&not_runnable)?;
        if kind == ManifestKind::Index {
            let child = oci::choose_platform(m.children()).map_err(&not_runnable)?;
            if !child.is_image_manifest() {
                return Err(not_runnable(format!(
                    "its entry {} is a {}, not an image manifest",
                    child.digest,
                    child
                        .media_type
                        .as_deref()
                        .unwrap_or("document of unknown type")
                )));
            }
            digest = child.digest.clone();
            let bytes = self.read_blob(&digest, "manifest")?;
            let kind = AnyManifest::parse(&bytes)
                .and_then(|m| m.kind())
                .map_err(|e| self.corrupt(format!("manifest {digest}: {e}")))?;
            if kind != ManifestKind::Image {
                return Err(not_runnable(format!(
                    "its entry for this platform, {digest}, is not a container image"
                )));
            }
        } else if kind == ManifestKind::Artifact {
            let what = m
                .artifact_type
                .clone()
                .or_else(|| m.config.as_ref().and_then(|c| c.media_type.clone()))
                .unwrap_or_else(|| "unknown".into());
            return Err(not_runnable(format!(
                "it is an artifact of type {what}, kept by the registry but not deployable"
            )));
        }
        let (manifest, _) = self.read_manifest(&digest)?;
        let config = self.read_config(&manifest.config)?;
        let diff_ids = config.diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(self.corrupt(format!(
                "image {digest} has {} layers but {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers: Vec<PathBuf> = Vec::with_capacity(diff_ids.len());
        for (i, diff_id) in diff_ids.iter().enumerate() {
            if !is_hex64(hex_of(diff_id)) {
                return Err(self.corrupt(format!("image {digest} has a malformed diff_id")));
            }
            let dir = self.layer_path(diff_id);
            if !dir.is_dir() {
                // A registry push keeps an image whose layers did not unpack as it came:
                // unpack now, or say why it cannot run.
                self.unpack_stored_layer(&manifest.layers[i], diff_id, &dir)
                    .map_err(|e| match e {
                        e @ ImageError::Io { .. } => e,
                        e => ImageError::NotRunnable {
                            reference: reference.to_string(),
                            reason: format!(
                                "layer {} of image {digest}: {e}",
                                manifest.layers[i].digest
                            ),
                        },
                    })?;
            }
            // Keep only the topmost occurrence of a repeated layer.
            if !diff_ids[i + 1..].contains(diff_id) {
                layers.push(dir);
            }
        }
        let c = config.config.unwrap_or_default();
        Ok(ResolvedImage {
            digest,
            layers,
            exposed_ports: c.tcp_ports(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        })
    }

    /// Unpack the stored layer blob `layer` into `target` (the layer directory of `diff_id`),
    /// verifying its diff_id, as an import does. Errors: `MissingContent` when the store does
    /// not hold the blob (a non-distributable layer), the unpacker's, `DiffIdMismatch`.
    fn unpack_stored_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        target: &Path,
    ) -> Result<(), ImageError> {
        parse_digest(&layer.digest)?;
        let blob = self.blob_path(&layer.digest);
        if !blob.is_file() {
            return Err(ImageError::MissingContent {
                what: "layer blob".into(),
                digest: layer.digest.clone(),
            });
        }
        let tmp = self.layer_tmp_dir()?;
        let actual = unpack::unpack_layer(&blob, &layer.digest, tmp.path())?;
        if actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.to_string(),
                actual,
            });
        }
        match fs::rename(tmp.path(), target) {
            Ok(()) => {
                let _ = tmp.keep();
                Ok(())
            }
            // Unpacked by another caller meanwhile.
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(ImageError::io(
                format!("cannot move layer into {}", target.display()),
                e,
            )),
        }
    }

    /// Remove `reference` (`NAME[:TAG]`, `NAME@sha256:HEX` for every tag of NAME at that
    /// digest, or a bare `sha256:HEX` for every reference to it), then garbage-collect blobs
    /// and layers that no remaining reference and no digest in `pinned` reaches.
    pub fn delete(&self, reference: &str, pinned: &[String]) -> Result<(), ImageError> {
        for p in pinned {
            parse_digest(p)?;
        }
        let selector = if reference.starts_with("sha256:") {
            Selector::Digest(parse_digest(reference)?)
        } else {
            let r = parse_reference(reference)?;
            match r.digest {
                Some(d) => Selector::NameAtDigest(r.name, d),
                None => Selector::Key(r.normalized()),
            }
        };
        let _gc = refs::lock(&self.root, GC_LOCK, true)?;
        let _refs = refs::lock(&self.root, REFS_LOCK, true)?;
        let mut table = refs::load(&self.root)?;
        let before = table.len();
        table.retain(|k, d| !selector.matches(k, d));
        if table.len() == before {
            return Err(ImageError::NotFound {
                reference: reference.to_string(),
            });
        }
        self.drop_unreached_children(&mut table, pinned)?;
        refs::save(&self.root, &table)?;
        tracing::info!(%reference, "deleted image reference");
        self.collect(&table, pinned).map(|_| ())
    }

    /// Remove from `table` the references marked as an index's children (pushed by digest,
    /// then listed by an index of their repository) whose digest nothing else reaches: no
    /// other reference, no index still kept, no digest in `pinned`. As docker-registry's
    /// garbage collection with `--delete-untagged` removes untagged manifests; a manifest
    /// pushed by digest that no index lists stays. Returns whether any went.
    fn drop_unreached_children(
        &self,
        table: &mut BTreeMap<String, String>,
        pinned: &[String],
    ) -> Result<bool, ImageError> {
        let children = refs::load_index_children(&self.root)?;
        if children.is_empty() {
            return Ok(false);
        }
        let roots: BTreeMap<String, String> = table
            .iter()
            .filter(|(k, _)| !children.contains(*k))
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect();
        let (keep, _) = self.reachable(&roots, pinned)?;
        let before = table.len();
        table.retain(|k, d| !children.contains(k) || keep.contains(hex_of(d)));
        for k in children.iter().filter(|k| !table.contains_key(*k)) {
            tracing::info!(reference = %k, "removed an index's child that nothing reaches");
        }
        Ok(table.len() != before)
    }

    /// Garbage-collect without removing a reference: drop every blob and unpacked layer that
    /// no reference and no digest in `pinned` reaches (e.g. after a revision that pinned an
    /// image whose reference was deleted is gone), and leftovers of interrupted imports.
    pub fn gc(&self, pinned: &[String]) -> Result<PruneReport, ImageError> {
        for p in pinned {
            parse_digest(p)?;
        }
        let _gc = refs::lock(&self.root, GC_LOCK, true)?;
        let table = {
            let _refs = refs::lock(&self.root, REFS_LOCK, true)?;
            let mut table = refs::load(&self.root)?;
            if self.drop_unreached_children(&mut table, pinned)? {
                refs::save(&self.root, &table)?;
            }
            table
        };
        self.collect(&table, pinned)
    }

    /// Remove every blob and layer not reachable from `table` or `pinned`, and leftovers of
    /// interrupted imports. Callers hold the gc lock exclusively.
    fn collect(
        &self,
        table: &BTreeMap<String, String>,
        pinned: &[String],
    ) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let (keep_blobs, keep_layers) = self.reachable(table, pinned)?;
        let blobs_dir = self.root.join("blobs").join("sha256");
        for (is_blob, dir, keep) in [
            (true, blobs_dir, &keep_blobs),
            (false, self.layers_dir(), &keep_layers),
        ] {
            for entry in fs::read_dir(&dir).ctx(|| format!("cannot list {}", dir.display()))? {
                let entry = entry.ctx(|| format!("cannot list {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                if is_blob {
                    report.blobs += 1;
                    report.bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                } else if !name.starts_with(LAYER_TMP_PREFIX) {
                    report.layers += 1;
                }
                remove_any(&entry.path())?;
                tracing::debug!(path = %entry.path().display(), "garbage collected");
            }
        }
        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).ctx(|| format!("cannot list {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("cannot list {}", tmp.display()))?;
            remove_any(&entry.path())?;
        }
        Ok(report)
    }

    /// Delete the blob `digest` (a config, layer or manifest blob) when no reference and no
    /// digest in `pinned` reaches it: what a registry's blob `DELETE` does. Returns whether
    /// the store held it. Errors: `InUse` when something still reaches it.
    pub fn delete_blob(&self, digest: &str, pinned: &[String]) -> Result<bool, ImageError> {
        parse_digest(digest)?;
        let _gc = refs::lock(&self.root, GC_LOCK, true)?;
        let path = self.blob_path(digest);
        if !path.is_file() {
            return Ok(false);
        }
        let table = refs::load(&self.root)?;
        let (keep, _) = self.reachable(&table, pinned)?;
        if keep.contains(hex_of(digest)) {
            let user = table
                .iter()
                .find(|(_, d)| {
                    let one = BTreeMap::from([(String::new(), (*d).clone())]);
                    self.reachable(&one, &[])
                        .is_ok_and(|(k, _)| k.contains(hex_of(digest)))
                })
                .map(|(r, _)| r.clone())
                .unwrap_or_else(|| "a deployed revision or job".into());
            return Err(ImageError::InUse {
                digest: digest.to_string(),
                user,
            });
        }
        remove_any(&path)?;
        tracing::info!(%digest, "deleted blob");
        Ok(true)
    }

    /// Hex digests of the blobs, and of the unpacked layers, that `table`'s references and
    /// `pinned` reach.
    fn reachable(
        &self,
        table: &BTreeMap<String, String>,
        pinned: &[String],
    ) -> Result<(HashSet<String>, HashSet<String>), ImageError> {
        let mut keep_blobs: HashSet<String> = HashSet::new();
        let mut keep_layers: HashSet<String> = HashSet::new();
        // Everything a reference or pin reaches: an index its manifests, a manifest its
        // config and layers, an image its unpacked layers.
        let mut work: Vec<String> = table.values().chain(pinned).cloned().collect();
        while let Some(digest) = work.pop() {
            if !self.blob_path(&digest).is_file() || !keep_blobs.insert(hex_of(&digest).to_string())
            {
                continue;
            }
            let bytes = match self.read_blob(&digest, "manifest") {
                Ok(b) => b,
                Err(e @ ImageError::Io { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "unreadable manifest kept as is");
                    continue;
                }
            };
            let m = match AnyManifest::parse(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "unreadable manifest kept as is");
                    continue;
                }
            };
            work.extend(
                m.children()
                    .iter()
                    .filter(|c| parse_digest(&c.digest).is_ok())
                    .map(|c| c.digest.clone()),
            );
            keep_blobs.extend(m.blobs().iter().map(|b| hex_of(&b.digest).to_string()));
            if m.kind() != Ok(ManifestKind::Image) {
                continue;
            }
            let Some(config_desc) = m.config.as_ref() else {
                continue;
            };
            match self.read_config(config_desc) {
                Ok(config) => {
                    keep_layers.extend(config.diff_ids().iter().map(|d| hex_of(d).to_string()))
                }
                Err(e @ ImageError::Io { .. }) => return Err(e),
                Err(e) => tracing::warn!(%digest, error = %e, "unreadable image config"),
            }
        }
        Ok((keep_blobs, keep_layers))
    }
}

/// Which references a delete removes.
enum Selector {
    /// Every reference to a digest.
    Digest(String),
    /// Every `NAME:TAG` of one name at a digest.
    NameAtDigest(String, String),
    /// One `NAME:TAG`.
    Key(String),
}

impl Selector {
    fn matches(&self, key: &str, digest: &str) -> bool {
        match self {
            Selector::Digest(d) => digest == d,
            Selector::NameAtDigest(name, d) => {
                digest == d
                    && (key
                        .strip_prefix(name.as_str())
                        .and_then(|r| r.strip_prefix('@'))
                        == Some(d.as_str())
                        || key
                            .strip_prefix(name.as_str())
                            .and_then(|rest| rest.strip_prefix(':'))
                            .is_some_and(|tag| !tag.contains('/')))
            }
            Selector::Key(k) => key == k,
        }
    }
}

/// Remove a file or a whole directory tree (never following symlinks).
fn remove_any(path: &Path) -> Result<(), ImageError> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    res.ctx(|| format!("cannot remove {}", path.display()))
}

/// Copy `reader` into a new file at `path`, returning `(sha256:HEX, length)`.
fn write_hashed(mut reader: impl Read, path: &Path) -> io::Result<(String, u64)> {
    let f = File::create(path)?;
    let mut w = HashingWriter::new(io::BufWriter::new(f));
    io::copy(&mut reader, &mut w)?;
    let (digest, len, mut inner) = w.finish();
    inner.flush()?;
    Ok((digest, len))
}

/// The compression of a stored blob, by its magic bytes.
fn sniff(path: &Path, layer: &str) -> Result<Compression, ImageError> {
    let mut head = Vec::new();
    File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .ctx(|| format!("cannot read {}", path.display()))?;
    compression::detect(&head).map_err(|reason| ImageError::BadLayer {
        layer: layer.to_string(),
        reason,
    })
}

/// The OCI manifest for a docker archive image, serialized deterministically.
fn synthesize_manifest(config: &StagedBlob, layers: &[StagedBlob]) -> Result<Vec<u8>, ImageError> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::MT_OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: Some(oci::MT_OCI_CONFIG.into()),
            digest: config.digest.clone(),
            size: config.size,
            annotations: None,
            platform: None,
        },
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: Some(l.compression.layer_media_type().into()),
                digest: l.digest.clone(),
                size: l.size,
                annotations: None,
                platform: None,
            })
            .collect(),
    };
    serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
        what: "synthesized manifest".into(),
        source,
    })
}
