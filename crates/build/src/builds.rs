//! Builds as objects: Cloud Build's `Build` resource (id, status, source, timing, results),
//! stored as kind `builds` in the store's objects table, parent the service it was for.
//!
//! [`Builds::submit`] records a build `QUEUED` and starts it; builds run one at a time in
//! arrival order (they are CPU- and disk-heavy, and share buildah's storage). A build goes
//! `QUEUED` → `WORKING` → `SUCCESS` | `FAILURE` | `TIMEOUT` | `CANCELLED`, each state written
//! before it is acted on. Its log is `DATA/builds/ID/log`; its source archive and unpacked
//! context are removed when it ends. A successful build's image is imported into Skiff's
//! image store under the names the build was asked for. [`Builds::recover`] marks builds a
//! killed server left unfinished as `FAILURE`.

use crate::buildah::{self, BudJob, BudOutcome, BuildahConfig, RegistryAccess};
use crate::detect;
use crate::{now_rfc3339, BuildError};
use serde::{Deserialize, Serialize};
use skiff_image::ImageStore;
use skiff_store::Store;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store kind of builds.
pub const KIND: &str = "builds";

/// A build's source archive in its directory: the uploaded tar.gz, or the zip gcloud staged
/// (see [`crate::source::unpack_file`]).
const SOURCE_FILE: &str = "source.archive";

/// Cloud Build's build statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildStatus {
    Queued,
    Working,
    Success,
    Failure,
    Timeout,
    Cancelled,
}

impl BuildStatus {
    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, BuildStatus::Queued | BuildStatus::Working)
    }
}

/// The source a build was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildSource {
    /// `sha256:HEX` of the uploaded tar.gz.
    pub digest: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What the build was built with (see [`detect::Plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildPlan {
    /// `dockerfile`, `python`, `nodejs`, `go` or `static`.
    pub kind: String,
    /// The user's Dockerfile, for `dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The base image of a detected language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
}

/// One built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// `NAME:TAG` in Skiff's image store.
    pub name: String,
    /// Manifest digest `sha256:...`.
    pub digest: String,
}

/// Results of a successful build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildResults {
    pub images: Vec<BuiltImage>,
}

/// A build, in the shape of Cloud Build's `Build` resource (camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Build {
    pub id: String,
    /// The namespace (Cloud Build's project).
    pub project_id: String,
    /// The service the build deploys, for `deploy --source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The job the build deploys, for `jobs deploy --source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    pub status: BuildStatus,
    /// Why a build failed, timed out or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    pub source: BuildSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<BuildPlan>,
    /// The names the image is stored under (`NAME:TAG`).
    pub images: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<BuildResults>,
    /// `--build-arg` values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,
    /// The time limit, as Cloud Build writes it (`600s`).
    pub timeout: String,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<String>,
}

/// What a client asks to build.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// The service to build for; the image is then named
    /// `NS/cloud-run-source-deploy/SERVICE:ID` and `...:latest` (Cloud Run's
    /// `cloud-run-source-deploy` repository).
    pub service: Option<String>,
    /// The job to build for (`jobs deploy --source`); the image is named as for a service,
    /// `NS/cloud-run-source-deploy/JOB:ID` and `...:latest`. At most one of `service` and
    /// `job`.
    pub job: Option<String>,
    /// The image name to store the result under (`NAME[:TAG]`), for `builds submit --tag`.
    pub image: Option<String>,
    /// `--build-arg` values; for detected languages also the build environment
    /// (`GOOGLE_ENTRYPOINT`, `GOOGLE_RUNTIME_VERSION`).
    pub build_args: BTreeMap<String, String>,
    /// The base image for a detected language (`--base-image`).
    pub base_image: Option<String>,
    /// The time limit; `None`: the server's default.
    pub timeout: Option<Duration>,
}

/// The server's build settings.
#[derive(Debug, Clone)]
pub struct BuildsConfig {
    /// `DATA/builds`.
    pub root: PathBuf,
    /// `HOST:PORT` of Skiff's own registry (the control API), reached with `admin_token`.
    pub own_registry: Option<String>,
    pub admin_token: String,
    /// The default time limit (Cloud Build's is 10 minutes).
    pub timeout: Duration,
    /// CPU limit of a build, in thousandths of a CPU.
    pub cpu_millis: u64,
    /// Memory limit of a build, in bytes.
    pub memory_bytes: u64,
    /// Base images per detected language (see [`detect::default_base_images`]).
    pub base_images: BTreeMap<String, String>,
    /// Most bytes a source may unpack to.
    pub max_source_bytes: u64,
    /// Most bytes of an uploaded source archive (compressed).
    pub max_archive_bytes: u64,
    /// Most bytes buildah's storage (`DATA/builds/storage`: the layer cache and the base
    /// images builds pulled) may hold after a build or an `images prune`; past it whole
    /// owners' caches are dropped, the owner whose newest build is oldest first (see
    /// [`Builds::limit_cache`]). 0: no layer cache is kept.
    pub cache_max_bytes: u64,
}

/// What [`Builds::prune_cache`] removed from buildah's layer cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachePrune {
    /// Images (cached steps) removed: how many fewer buildah's storage holds.
    pub images: usize,
    /// Cache tags dropped because their service, job or image name no longer exists.
    pub stages: usize,
    /// Owners (`NS/service-NAME`, `NS/job-NAME`, `NS/image-HASH`) whose caches were dropped
    /// because buildah's storage was over `--build-cache-max`, in the order dropped.
    pub over_limit: Vec<String>,
    /// Bytes the storage shrank by.
    pub bytes: u64,
}

/// The server's builds: submission, the queue, cancellation, logs, recovery.
pub struct Builds {
    cfg: BuildsConfig,
    buildah: BuildahConfig,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    network: Option<Arc<skiff_network::Network>>,
    registries: Arc<skiff_registry::Registries>,
    staging: crate::staging::Staging,
    queue: tokio::sync::Semaphore,
    running: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl Builds {
    /// The builds of a server whose data dir holds `cfg.root`.
    pub fn new(
        cfg: BuildsConfig,
        store: Arc<Store>,
        images: Arc<ImageStore>,
        network: Option<Arc<skiff_network::Network>>,
        registries: Arc<skiff_registry::Registries>,
    ) -> Arc<Builds> {
        let buildah = BuildahConfig {
            root: cfg.root.clone(),
            cpu_millis: cfg.cpu_millis,
            memory_bytes: cfg.memory_bytes,
            cgroup_parent: buildah::cgroup_parent(cfg.root.parent().unwrap_or(&cfg.root)),
        };
        Arc::new(Builds {
            staging: crate::staging::Staging::new(cfg.root.join("staging")),
            cfg,
            buildah,
            store,
            images,
            network,
            registries,
            queue: tokio::sync::Semaphore::new(1),
            running: Mutex::new(HashMap::new()),
        })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join(id)
    }

    /// The staging buckets gcloud uploads sources to (`DATA/builds/staging`).
    pub fn staging(&self) -> &crate::staging::Staging {
        &self.staging
    }

    /// The largest source archive taken, in bytes.
    pub fn max_archive_bytes(&self) -> u64 {
        self.cfg.max_archive_bytes
    }

    /// Where a build's log is.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    /// Where to spool an upload before [`Builds::submit`]: a new file in `DATA/builds/tmp`.
    pub fn spool(&self) -> Result<tempfile::NamedTempFile, BuildError> {
        let tmp = self.cfg.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(BuildError::io(tmp.display().to_string()))?;
        tempfile::NamedTempFile::new_in(&tmp).map_err(BuildError::io(tmp.display().to_string()))
    }

    /// Marks builds a previous run left `QUEUED` or `WORKING` as `FAILURE`, and removes what
    /// they left (buildah's working containers, cgroups, sources). Returns how many.
    pub async fn recover(&self) -> Result<usize, BuildError> {
        buildah::sweep_cgroups(&self.buildah).await;
        let auth_dir = self.cfg.root.join("auth");
        if buildah::write_registry_files(&auth_dir, &[]).is_ok() {
            buildah::remove_containers(&self.buildah, &auth_dir).await;
        }
        let _ = std::fs::remove_dir_all(self.cfg.root.join("tmp"));
        let mut n = 0;
        for mut b in self.store.list_objects::<Build>(KIND, None, None)? {
            if b.status.is_final() {
                continue;
            }
            b.status = BuildStatus::Failure;
            b.status_detail =
                Some("the server stopped while the build was running: submit it again".into());
            b.finish_time = Some(now_rfc3339());
            self.put(&b)?;
            let _ = std::fs::remove_dir_all(self.dir(&b.id).join("context"));
            let _ = std::fs::remove_file(self.dir(&b.id).join(SOURCE_FILE));
            n += 1;
        }
        Ok(n)
    }

    /// Stops every build (they end as a killed server's do: `FAILURE` at the next start) and
    /// removes their cgroups and working containers.
    pub async fn shutdown(&self) {
        buildah::sweep_cgroups(&self.buildah).await;
        buildah::remove_containers(&self.buildah, &self.cfg.root.join("auth")).await;
    }

    /// Prunes buildah's layer cache (part of `skiff images prune`): drops the cache of every
    /// service and job that no longer exists and of every `builds submit --tag` name Skiff's
    /// image store no longer holds (the image deleted, or collected by the same prune before
    /// this runs), then removes every image no kept cache tag descends from, then keeps the
    /// storage within `--build-cache-max` (see [`Builds::limit_cache`]). Waits for the running
    /// build, if any.
    pub async fn prune_cache(&self) -> CachePrune {
        let _permit = self
            .queue
            .acquire()
            .await
            .expect("the queue is never closed");
        let auth_dir = self.cfg.root.join("auth");
        if buildah::write_registry_files(&auth_dir, &[]).is_err() {
            return CachePrune::default();
        }
        let before = buildah::storage_bytes(&self.buildah);
        let images_before = buildah::image_count(&self.buildah, &auth_dir).await;
        let mut owners = 0;
        // The image names of `builds submit --tag` builds by cache key, and the names Skiff's
        // store holds (`None` when either cannot be read: then no such cache is dropped).
        let tag_names: Option<HashMap<String, String>> = self
            .store
            .list_objects::<Build>(KIND, None, None)
            .map_err(|e| tracing::warn!("cannot read builds to prune the build cache: {e}"))
            .ok()
            .map(|all| {
                all.into_iter()
                    .filter(|b| b.service.is_none() && b.job.is_none())
                    .filter_map(|b| Some((cache_key(&b), b.images.first()?.clone())))
                    .collect()
            });
        let kept_images: Option<BTreeSet<String>> = {
            let images = self.images.clone();
            tokio::task::spawn_blocking(move || images.list())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|l| l.into_iter().map(|i| i.reference).collect())
        };
        for t in buildah::cache_tags(&self.buildah, &auth_dir).await {
            let Some(key) = cache_owner(&t) else {
                continue;
            };
            let Some((ns, owner)) = key.split_once('/') else {
                continue;
            };
            let gone = if let Some(s) = owner.strip_prefix("service-") {
                matches!(self.store.get_service(ns, s), Ok(None))
            } else if let Some(j) = owner.strip_prefix("job-") {
                matches!(
                    self.store
                        .get_object::<serde_json::Value>(skiff_store::kind::JOB, ns, j),
                    Ok(None)
                )
            } else if owner.starts_with("image-") {
                // A `builds submit --tag` cache lives as long as its image name does in
                // Skiff's store (`images delete`, or collected by this prune).
                match (&kept_images, &tag_names) {
                    (Some(refs), Some(names)) => names.get(key).is_none_or(|n| !refs.contains(n)),
                    _ => false,
                }
            } else {
                false
            };
            if gone {
                buildah::drop_cache_tag(&self.buildah, &auth_dir, &t).await;
                owners += 1;
            }
        }
        buildah::prune_dangling(&self.buildah, &auth_dir).await;
        let over = self.limit_cache(&auth_dir, None).await;
        let images =
            images_before.saturating_sub(buildah::image_count(&self.buildah, &auth_dir).await);
        let after = buildah::storage_bytes(&self.buildah);
        CachePrune {
            images,
            stages: owners,
            over_limit: over,
            bytes: before.saturating_sub(after),
        }
    }

    /// Keeps buildah's storage within `--build-cache-max` ([`BuildsConfig::cache_max_bytes`]):
    /// while it holds more bytes than that, drops the whole cache of one more owner (a
    /// service, job or image name, see [`cache_key`]), the owner whose newest build was
    /// created longest ago first (the build objects' times, so the order survives a restart;
    /// buildah's own image times are all 0 under `--timestamp 0`), never `keep`, and removes
    /// what no kept tag stands on after each. Returns the owners dropped (`NS/service-NAME`,
    /// ...), each also logged. The caller holds the build queue.
    async fn limit_cache(&self, auth_dir: &Path, keep: Option<&str>) -> Vec<String> {
        let max = self.cfg.cache_max_bytes;
        if self.storage_bytes().await <= max {
            return Vec::new();
        }
        let tags = buildah::cache_tags(&self.buildah, auth_dir).await;
        let owners: BTreeSet<String> = tags
            .iter()
            .filter_map(|t| cache_owner(t))
            .map(String::from)
            .collect();
        let newest = match self.newest_builds() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("cannot read builds to limit the build cache: {e}");
                return Vec::new();
            }
        };
        let mut dropped = Vec::new();
        for owner in drop_order(&owners, &newest, keep) {
            let before = self.storage_bytes().await;
            if before <= max {
                break;
            }
            for t in tags
                .iter()
                .filter(|t| cache_owner(t) == Some(owner.as_str()))
            {
                buildah::drop_cache_tag(&self.buildah, auth_dir, t).await;
            }
            buildah::prune_dangling(&self.buildah, auth_dir).await;
            let after = self.storage_bytes().await;
            tracing::info!(
                owner = %owner,
                freed_bytes = before.saturating_sub(after),
                storage_bytes = after,
                cache_max_bytes = max,
                "dropped a build layer cache: buildah's storage was over --build-cache-max"
            );
            dropped.push(owner);
        }
        dropped
    }

    /// [`buildah::storage_bytes`], walked off the async threads.
    async fn storage_bytes(&self) -> u64 {
        let cfg = self.buildah.clone();
        tokio::task::spawn_blocking(move || buildah::storage_bytes(&cfg))
            .await
            .unwrap_or(0)
    }

    /// The creation time (RFC 3339, UTC) of each cache owner's newest build, by
    /// [`cache_key`].
    fn newest_builds(&self) -> Result<HashMap<String, String>, BuildError> {
        let mut out: HashMap<String, String> = HashMap::new();
        for b in self.store.list_objects::<Build>(KIND, None, None)? {
            let t = out.entry(cache_key(&b)).or_default();
            if b.create_time > *t {
                *t = b.create_time;
            }
        }
        Ok(out)
    }

    fn put(&self, b: &Build) -> Result<(), BuildError> {
        self.store.put_object(
            KIND,
            &b.project_id,
            &b.id,
            &parent(b.service.as_deref(), b.job.as_deref()),
            b,
        )?;
        Ok(())
    }

    /// One build, or [`BuildError::NotFound`].
    pub fn get(&self, ns: &str, id: &str) -> Result<Build, BuildError> {
        self.store
            .get_object(KIND, ns, id)?
            .ok_or_else(|| BuildError::NotFound(id.to_string()))
    }

    /// The builds of a namespace, newest first, optionally of one service or one job.
    pub fn list(
        &self,
        ns: &str,
        service: Option<&str>,
        job: Option<&str>,
    ) -> Result<Vec<Build>, BuildError> {
        let owner = (service.is_some() || job.is_some()).then(|| parent(service, job));
        let mut all: Vec<Build> = self.store.list_objects(KIND, Some(ns), owner.as_deref())?;
        all.reverse();
        Ok(all)
    }

    /// Asks a queued or running build to stop; it ends `CANCELLED`. A build that has ended is
    /// returned as it is.
    pub fn cancel(&self, ns: &str, id: &str) -> Result<Build, BuildError> {
        let b = self.get(ns, id)?;
        if !b.status.is_final() {
            if let Some(tx) = self.running.lock().expect("builds lock").get(id) {
                let _ = tx.send(true);
            }
        }
        self.get(ns, id)
    }

    /// Records a build of the source archive `source` (a spooled tar.gz of `bytes` bytes with
    /// `digest`) and starts it. Lines of its log are sent on the returned channel as they come
    /// (the channel closes when the build has ended and is stored); the build runs on even if
    /// the receiver is dropped. Errors: a request that cannot be built (image name, build
    /// argument), the store.
    pub fn submit(
        self: &Arc<Self>,
        ns: &str,
        req: BuildRequest,
        source: tempfile::NamedTempFile,
        digest: String,
        bytes: u64,
    ) -> Result<(Build, tokio::sync::mpsc::UnboundedReceiver<String>), BuildError> {
        let id = skiff_model::new_uuid();
        if req.service.is_some() && req.job.is_some() {
            return Err(BuildError::Invalid(
                "a build is for a service or for a job, not both".into(),
            ));
        }
        let images = match (req.service.as_ref().or(req.job.as_ref()), &req.image) {
            (_, Some(name)) => {
                let r = skiff_image::parse_reference(name).map_err(|e| {
                    BuildError::Invalid(format!("invalid image name {name:?}: {e}"))
                })?;
                if r.digest.is_some() {
                    return Err(BuildError::Invalid(format!(
                        "invalid image name {name:?}: a built image is named NAME[:TAG], not by digest"
                    )));
                }
                vec![r.normalized()]
            }
            (Some(svc), None) => vec![
                format!("{ns}/cloud-run-source-deploy/{svc}:{id}"),
                format!("{ns}/cloud-run-source-deploy/{svc}:latest"),
            ],
            (None, None) => {
                return Err(BuildError::Invalid(
                    "a build needs an image name (--tag NAME) or a service".into(),
                ))
            }
        };
        for k in req.build_args.keys() {
            if k.is_empty() || k.contains(['=', '\n']) {
                return Err(BuildError::Invalid(format!(
                    "invalid build argument name {k:?}: give KEY=VALUE"
                )));
            }
        }
        let timeout = req.timeout.unwrap_or(self.cfg.timeout);
        let b = Build {
            id: id.clone(),
            project_id: ns.to_string(),
            service: req.service.clone(),
            job: req.job.clone(),
            status: BuildStatus::Queued,
            status_detail: None,
            source: BuildSource { digest, bytes },
            plan: None,
            images,
            results: None,
            build_args: req.build_args.clone(),
            timeout: format!("{}s", timeout.as_secs()),
            create_time: now_rfc3339(),
            start_time: None,
            finish_time: None,
        };
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir).map_err(BuildError::io(dir.display().to_string()))?;
        let archive = dir.join(SOURCE_FILE);
        source
            .persist(&archive)
            .map_err(|e| BuildError::io(archive.display().to_string())(e.error))?;
        self.put(&b)?;
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        self.running
            .lock()
            .expect("builds lock")
            .insert(id.clone(), cancel_tx);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let this = self.clone();
        let build = b.clone();
        tokio::spawn(async move {
            this.drive(build, req, timeout, tx, cancel_rx).await;
        });
        Ok((b, rx))
    }

    async fn drive(
        self: Arc<Self>,
        mut b: Build,
        req: BuildRequest,
        timeout: Duration,
        tx: tokio::sync::mpsc::UnboundedSender<String>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) {
        let log_path = self.log_path(&b.id);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ok();
        let mut log = move |line: String| {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            let _ = tx.send(line);
        };
        let outcome = self.run(&mut b, req, timeout, &mut log, cancel).await;
        let (status, detail) = match outcome {
            Ok(results) => {
                b.results = Some(results);
                (BuildStatus::Success, None)
            }
            Err(Ended(status, detail)) => (status, Some(detail)),
        };
        if let Some(d) = &detail {
            log(format!("ERROR: {d}"));
        } else {
            log("DONE".into());
        }
        b.status = status;
        b.status_detail = detail;
        b.finish_time = Some(now_rfc3339());
        if let Err(e) = self.put(&b) {
            tracing::error!(build = %b.id, "cannot record the end of the build: {e}");
        }
        self.running.lock().expect("builds lock").remove(&b.id);
        let dir = self.dir(&b.id);
        let _ = std::fs::remove_dir_all(dir.join("context"));
        let _ = std::fs::remove_dir_all(dir.join("image"));
        let _ = std::fs::remove_file(dir.join(SOURCE_FILE));
        // `log` (and with it the channel's sender) is dropped here: the stream ends after
        // the final state is stored.
    }

    async fn run(
        &self,
        b: &mut Build,
        req: BuildRequest,
        timeout: Duration,
        log: &mut (dyn FnMut(String) + Send),
        mut cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Result<BuildResults, Ended> {
        let fail = |e: BuildError| Ended(BuildStatus::Failure, e.to_string());
        log(format!(
            "Build {} queued: source {} ({} bytes)",
            b.id, b.source.digest, b.source.bytes
        ));
        let _permit = tokio::select! {
            p = self.queue.acquire() => p.expect("the queue is never closed"),
            _ = cancel.wait_for(|c| *c) => {
                return Err(Ended(BuildStatus::Cancelled, "cancelled while queued".into()));
            }
        };
        b.status = BuildStatus::Working;
        b.start_time = Some(now_rfc3339());
        self.put(b).map_err(fail)?;
        let dir = self.dir(&b.id);
        let context = dir.join("context");
        std::fs::create_dir_all(&context)
            .map_err(BuildError::io(context.display().to_string()))
            .map_err(fail)?;
        {
            let archive = dir.join(SOURCE_FILE);
            let context = context.clone();
            let max = self.cfg.max_source_bytes;
            tokio::task::spawn_blocking(move || {
                crate::source::unpack_file(&archive, &context, max)
            })
            .await
            .expect("unpack does not panic")
            .map_err(fail)?;
        }
        let plan = detect::detect(
            &context,
            &self.cfg.base_images,
            req.base_image.as_deref(),
            &req.build_args,
        )
        .map_err(fail)?;
        let dockerfile = match (&plan.dockerfile, &plan.generated) {
            (Some(name), _) => context.join(name),
            (None, Some(text)) => {
                let p = dir.join("Dockerfile.generated");
                std::fs::write(&p, text)
                    .map_err(BuildError::io(p.display().to_string()))
                    .map_err(fail)?;
                log(format!("Generated Dockerfile ({}):", plan.kind));
                for l in text.lines() {
                    log(format!("  {l}"));
                }
                p
            }
            (None, None) => unreachable!("a plan has a Dockerfile"),
        };
        b.plan = Some(BuildPlan {
            kind: plan.kind.clone(),
            dockerfile: plan.dockerfile.clone(),
            base_image: plan.base_image.clone(),
        });
        self.put(b).map_err(fail)?;
        log(format!(
            "Building with {}",
            plan.dockerfile.as_deref().unwrap_or(&plan.kind)
        ));

        // Registries the build may pull from: Skiff's own, what `registries login` stored,
        // and loopback registries the FROM lines name (over HTTP, as Docker does).
        let auth_dir = dir.join("auth");
        let text = std::fs::read_to_string(&dockerfile).unwrap_or_default();
        let access = self.registry_access(&text);
        buildah::write_registry_files(&auth_dir, &access).map_err(fail)?;

        // The network sandbox: held until the build ends.
        let lease = match &self.network {
            Some(net) => Some(
                net.acquire(skiff_network::Owner::new(
                    &b.project_id,
                    &format!("build-{}", b.id),
                    None,
                ))
                .await
                .map_err(|e| {
                    Ended(
                        BuildStatus::Failure,
                        format!("cannot make the build's network sandbox: {e}"),
                    )
                })?,
            ),
            None => None,
        };
        let netns = lease.as_ref().map(|l| {
            use std::os::fd::AsRawFd;
            format!("/proc/{}/fd/{}", std::process::id(), l.netns().as_raw_fd())
        });
        let tag = format!("localhost/skiff-build/{}", b.id);
        let job = BudJob {
            id: b.id.clone(),
            context: context.clone(),
            dockerfile,
            tag: tag.clone(),
            build_args: if plan.kind == "dockerfile" {
                req.build_args.clone()
            } else {
                BTreeMap::new()
            },
            netns,
            dns: self.network.as_ref().map(|n| n.gateway()),
            auth_dir: auth_dir.clone(),
            timeout,
        };
        let mut lines = Vec::new();
        let mut tee = |l: String| {
            if l.starts_with("-->") || l.starts_with('[') {
                lines.push(l.clone());
            }
            log(l)
        };
        let outcome = buildah::bud(&self.buildah, &job, &mut tee, cancel)
            .await
            .map_err(fail)?;
        drop(lease);
        let result = match outcome {
            BudOutcome::Success => Ok(()),
            BudOutcome::Failed(code) => Err(Ended(
                BuildStatus::Failure,
                match code {
                    Some(c) => format!("the build failed: buildah exited with {c}"),
                    None => {
                        "the build was killed by a signal (its memory limit, or the server stopping)"
                            .into()
                    }
                },
            )),
            BudOutcome::TimedOut => Err(Ended(
                BuildStatus::Timeout,
                format!(
                    "the build did not finish within its timeout of {}",
                    b.timeout
                ),
            )),
            BudOutcome::Cancelled => Err(Ended(BuildStatus::Cancelled, "cancelled".into())),
        };
        if let Err(e) = result {
            buildah::remove_containers(&self.buildah, &auth_dir).await;
            return Err(e);
        }
        let layout = dir.join("image");
        buildah::push_oci(&self.buildah, &auth_dir, &tag, &layout)
            .await
            .map_err(fail)?;
        let images = self.images.clone();
        let names = b.images.clone();
        let imported =
            tokio::task::spawn_blocking(move || -> Result<Vec<BuiltImage>, BuildError> {
                let first =
                    images.import_pulled(&layout, &names[0], skiff_image::ImageSource::Built)?;
                let mut out = vec![BuiltImage {
                    name: first.reference.clone(),
                    digest: first.digest.clone(),
                }];
                for n in &names[1..] {
                    let t = images.tag(n, &first.digest, skiff_image::ImageSource::Built)?;
                    out.push(BuiltImage {
                        name: t.reference,
                        digest: t.digest,
                    });
                }
                Ok(out)
            })
            .await
            .expect("import does not panic")
            .map_err(fail)?;
        // buildah's own copy of the result is not needed once the cache tags are on it.
        // The cache this build made stays (tagged per service, job or image name); what
        // earlier builds of the same owner made and this one did not use goes.
        let key = cache_key(b);
        let cached = match buildah::keep_cache(
            &self.buildah,
            &auth_dir,
            &key,
            &buildah::stage_images(&lines),
        )
        .await
        {
            Ok(()) => true,
            Err(e) => {
                log(format!("warning: {e}"));
                false
            }
        };
        let _ = self
            .buildah
            .command(&auth_dir)
            .args(["rmi", &tag])
            .output()
            .await;
        if cached {
            buildah::prune_dangling(&self.buildah, &auth_dir).await;
        }
        // Within `--build-cache-max`: other owners' caches go, least recently built first;
        // this build's own stays unless no cache is to be kept at all.
        let keep = (self.cfg.cache_max_bytes > 0).then_some(key.as_str());
        for owner in self.limit_cache(&auth_dir, keep).await {
            log(format!(
                "Dropped the layer cache of {owner}: buildah's storage was over the server's \
                 --build-cache-max of {} bytes",
                self.cfg.cache_max_bytes
            ));
        }
        for i in &imported {
            log(format!("Built image {} {}", i.name, i.digest));
        }
        Ok(BuildResults { images: imported })
    }

    fn registry_access(&self, dockerfile: &str) -> Vec<RegistryAccess> {
        let mut out = Vec::new();
        if let Some(own) = &self.cfg.own_registry {
            out.push(RegistryAccess {
                host: own.clone(),
                username: Some("skiff".into()),
                password: Some(self.cfg.admin_token.clone()),
                insecure: buildah::is_loopback_host(own),
            });
        }
        if let Ok(all) = self.registries.load() {
            for (host, s) in all {
                if out.iter().any(|r| r.host == host) {
                    continue;
                }
                out.push(RegistryAccess {
                    insecure: s.insecure || buildah::is_loopback_host(&host),
                    host,
                    username: s.username,
                    password: s.password,
                });
            }
        }
        for host in buildah::from_hosts(dockerfile) {
            if out.iter().any(|r| r.host == host) {
                continue;
            }
            let creds = self.registries.settings_for(&host).unwrap_or_default();
            out.push(RegistryAccess {
                insecure: creds.insecure || buildah::is_loopback_host(&host),
                host,
                username: creds.username,
                password: creds.password,
            });
        }
        out
    }
}

/// How a build that did not succeed ended, and why.
struct Ended(BuildStatus, String);

/// Reads the end of a build's log: its last `n` lines.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The key of a build's layer cache in buildah's storage (see [`buildah::cache_repository`]):
/// `NS/service-NAME`, `NS/job-NAME`, or `NS/image-HASH` (the first 16 hex digits of the
/// SHA-256 of the image name) for `builds submit --tag`.
fn cache_key(b: &Build) -> String {
    match (&b.service, &b.job) {
        (Some(s), _) => format!("{}/service-{s}", b.project_id),
        (None, Some(j)) => format!("{}/job-{j}", b.project_id),
        (None, None) => {
            use sha2::Digest;
            let name = b.images.first().map(String::as_str).unwrap_or("");
            let h = hex::encode(sha2::Sha256::digest(name.as_bytes()));
            format!("{}/image-{}", b.project_id, &h[..16])
        }
    }
}

/// The owner key (`NS/service-NAME`, ...) of a cache tag `localhost/skiff-cache/KEY:stage-N`.
fn cache_owner(tag: &str) -> Option<&str> {
    let rest = tag.strip_prefix(&buildah::cache_repository(""))?;
    let (key, _) = rest.rsplit_once(':')?;
    Some(key)
}

/// The order in which owners' caches go when buildah's storage is over the limit: the owner
/// whose newest build (`newest`, RFC 3339 UTC times, which sort as text) is oldest first, an
/// owner without a stored build before any, ties by key; `keep` never.
fn drop_order(
    owners: &BTreeSet<String>,
    newest: &HashMap<String, String>,
    keep: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<&String> = owners.iter().filter(|o| Some(o.as_str()) != keep).collect();
    out.sort_by_key(|o| (newest.get(*o).map(String::as_str).unwrap_or(""), o.as_str()));
    out.into_iter().cloned().collect()
}

/// The store parent of a build: the service's name (as builds were always stored), or
/// `job:NAME` for a job's (a `:` is in no service name, so the two never meet), or empty.
fn parent(service: Option<&str>, job: Option<&str>) -> String {
    match (service, job) {
        (Some(s), _) => s.to_string(),
        (None, Some(j)) => format!("job:{j}"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_owners_of_tags() {
        for (tag, want) in [
            (
                "localhost/skiff-cache/default/service-a:stage-0",
                Some("default/service-a"),
            ),
            (
                "localhost/skiff-cache/ns/image-0123456789abcdef:stage-2",
                Some("ns/image-0123456789abcdef"),
            ),
            ("localhost/skiff-build/x:latest", None),
            ("localhost/skiff-cache/default/job-j", None),
        ] {
            assert_eq!(cache_owner(tag), want, "{tag}");
        }
    }

    #[test]
    fn least_recently_built_owner_goes_first_never_the_kept_one() {
        let owners: BTreeSet<String> = ["d/service-a", "d/service-b", "d/job-c", "d/image-x"]
            .map(String::from)
            .into();
        let newest: HashMap<String, String> = [
            ("d/service-a", "2026-01-02T00:00:00.000000000Z"),
            ("d/service-b", "2026-01-01T00:00:00.000000000Z"),
            ("d/job-c", "2026-01-03T00:00:00.000000000Z"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        // No stored build (d/image-x) counts as oldest.
        assert_eq!(
            drop_order(&owners, &newest, None),
            ["d/image-x", "d/service-b", "d/service-a", "d/job-c"]
        );
        assert_eq!(
            drop_order(&owners, &newest, Some("d/service-b")),
            ["d/image-x", "d/service-a", "d/job-c"]
        );
        assert!(drop_order(&BTreeSet::new(), &newest, None).is_empty());
    }

    fn build(service: Option<&str>, job: Option<&str>, image: &str) -> Build {
        Build {
            id: "1".into(),
            project_id: "ns".into(),
            service: service.map(String::from),
            job: job.map(String::from),
            status: BuildStatus::Success,
            status_detail: None,
            source: BuildSource::default(),
            plan: None,
            images: vec![image.into()],
            results: None,
            build_args: BTreeMap::new(),
            timeout: "600s".into(),
            create_time: String::new(),
            start_time: None,
            finish_time: None,
        }
    }

    #[test]
    fn cache_keys() {
        assert_eq!(cache_key(&build(Some("s"), None, "x")), "ns/service-s");
        assert_eq!(cache_key(&build(None, Some("j"), "x")), "ns/job-j");
        let a = cache_key(&build(None, None, "ns/app:1"));
        let b = cache_key(&build(None, None, "ns/app:2"));
        assert!(
            a.starts_with("ns/image-") && a.len() == "ns/image-".len() + 16,
            "{a}"
        );
        assert_ne!(a, b);
    }
}
