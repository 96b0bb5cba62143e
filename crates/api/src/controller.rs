//! The control plane's logic: what a create, replace or delete of a service means for the
//! store and the serving plane. Every write goes to the store first (so nothing accepted is
//! lost), then the serving plane is told, then status is written back.
//!
//! A new revision is *warmed* before it takes traffic: one instance is started and must
//! listen on its port (Cloud Run's deploy check). Only then does the route move, so a deploy
//! never sends a request to a revision that cannot serve it.

use crate::error::{ApiError, ApiResult};
use skiff_image::ImageStore;
use skiff_model::*;
use skiff_registry::{
    is_registry_reference, ProgressSink, Pulled, Puller, Registries, RegistryError,
};
use skiff_serving::pool::{RevKey, STARTUP_TIMEOUT};
use skiff_serving::{RouteSpec, Serving};
use skiff_store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type ServiceLock = Arc<tokio::sync::Mutex<()>>;

pub struct Controller {
    pub store: Arc<Store>,
    pub images: Arc<ImageStore>,
    /// Pulls images named `HOST[:PORT]/REPO[:TAG|@DIGEST]` into `images` on deploy, with the
    /// registry settings in `DATA/registries.json` (beside the image store).
    pub puller: Puller,
    pub serving: Arc<Serving>,
    /// Host suffix of URLs: `:PORT` of the ingress.
    pub ingress_port: u16,
    /// One lock per service: read-modify-write of a service never interleaves.
    locks: Mutex<HashMap<(String, String), ServiceLock>>,
    /// Deploy checks (a new revision's first instance) running at once: see
    /// [`DEPLOY_CHECKS`].
    checks: Arc<tokio::sync::Semaphore>,
}

/// How many new revisions may start their first instance at once. A burst of deploys (10 000
/// services created through the API in a minute, say) would otherwise start as many
/// instances together: each would wait seconds for its network sandbox, and past the
/// instance subnet's size they would fail for want of an address. The others wait their turn
/// (their Ready condition stays Unknown meanwhile, as it does while an instance starts).
pub const DEPLOY_CHECKS: usize = 16;

/// Run [`Controller::prune_images`] every `every`, first after one period.
pub fn start_pruning(controller: Arc<Controller>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = controller.prune_images().await {
                tracing::warn!("periodic image prune failed: {}", e.message);
            }
        }
    });
}

fn revision_ready(r: &Revision) -> Option<bool> {
    let c = ready_status(&r.status.as_ref()?.conditions)?;
    match c.status.as_str() {
        "True" => Some(true),
        "False" => Some(false),
        _ => None,
    }
}

fn revision_message(r: &Revision) -> String {
    r.status
        .as_ref()
        .and_then(|s| ready_status(&s.conditions))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

impl Controller {
    pub fn new(
        store: Arc<Store>,
        images: Arc<ImageStore>,
        serving: Arc<Serving>,
        ingress_port: u16,
    ) -> Arc<Self> {
        let registries = images
            .root()
            .parent()
            .unwrap_or(images.root())
            .join("registries.json");
        let puller = Puller::new(images.clone(), Arc::new(Registries::open(&registries)));
        Arc::new(Controller {
            store,
            images,
            puller,
            serving,
            ingress_port,
            locks: Mutex::new(HashMap::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(DEPLOY_CHECKS)),
        })
    }

    /// Pull `image` when it names a registry (`HOST[:PORT]/REPO...`), so that the store holds
    /// what the registry has under that reference now; `None` for local names. Errors name
    /// `field` (where the image was given) and say what to do.
    pub async fn pull_if_remote(&self, image: &str, field: &str) -> ApiResult<Option<Pulled>> {
        self.pull_if_remote_with_progress(image, field, None).await
    }

    /// [`Controller::pull_if_remote`], sending the pull's progress to `progress`.
    pub async fn pull_if_remote_with_progress(
        &self,
        image: &str,
        field: &str,
        progress: Option<&ProgressSink>,
    ) -> ApiResult<Option<Pulled>> {
        if !is_registry_reference(image) {
            return Ok(None);
        }
        match self.puller.pull_with_progress(image, progress).await {
            Ok(p) => {
                tracing::info!(
                    reference = %p.reference, digest = %p.digest, downloaded = p.downloaded,
                    bytes = p.downloaded_bytes, "pulled image"
                );
                Ok(Some(p))
            }
            Err(e @ RegistryError::Io { .. }) => {
                Err(ApiError::internal(format!("{field}: pulling {image}: {e}")))
            }
            Err(e) => Err(ApiError::invalid(format!("{field}: {e}"))),
        }
    }

    /// Digests that deployed revisions and job executions pin: garbage collection keeps them
    /// even when no image reference is left.
    pub fn pinned_digests(&self) -> ApiResult<Vec<String>> {
        let mut pinned: Vec<String> = self
            .store
            .list_revisions(None, None)?
            .iter()
            .filter_map(|r| r.status.as_ref())
            .flat_map(RevisionStatus::pinned_digests)
            .collect();
        let executions: Vec<skiff_model::Execution> =
            self.store
                .list_objects(skiff_store::kind::EXECUTION, None, None)?;
        pinned.extend(executions.iter().filter_map(|e| {
            let d = e.metadata.annotations.get("skiff.dev/image-digest")?;
            Some(
                d.rsplit_once('@')
                    .map_or(d.as_str(), |(_, d)| d)
                    .to_string(),
            )
        }));
        pinned.retain(|d| d.starts_with("sha256:"));
        pinned.sort();
        pinned.dedup();
        Ok(pinned)
    }

    /// `skiff images prune`: delete blobs and unpacked layers that no image reference,
    /// revision or job execution reaches, and pushes abandoned for an hour. Imports, pulls
    /// and pushes in progress hold the store's lock, so the collection waits for them.
    pub async fn prune_images(&self) -> ApiResult<serde_json::Value> {
        let pinned = self.pinned_digests()?;
        let images = self.images.clone();
        let (report, uploads) = tokio::task::spawn_blocking(move || {
            let uploads =
                skiff_registry::serve::sweep_uploads(images.root(), Duration::from_secs(3600));
            (images.gc(&pinned), uploads)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
        let report = report?;
        let uploads = uploads.map_err(|e| ApiError::internal(format!("sweeping uploads: {e}")))?;
        tracing::info!(
            blobs = report.blobs,
            layers = report.layers,
            bytes = report.bytes,
            uploads,
            "pruned images"
        );
        Ok(serde_json::json!({
            "blobs": report.blobs, "layers": report.layers, "bytes": report.bytes,
            "uploads": uploads,
        }))
    }

    async fn lock(&self, ns: &str, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((ns.to_string(), name.to_string()))
            .or_default()
            .clone();
        m.lock_owned().await
    }

    /// A service's (or tag's) URL, as `--domain` and the ingress's listeners make it
    /// ([`skiff_model::ServiceUrls::url`]).
    pub fn url(&self, ns: &str, service: &str, tag: Option<&str>) -> String {
        self.serving.urls().url(ns, service, tag)
    }

    /// Creates (`existing` = false) or replaces a service. Returns the stored object.
    pub async fn apply_service(
        self: &Arc<Self>,
        ns: &str,
        mut svc: Service,
        create: bool,
    ) -> ApiResult<Service> {
        validate_namespace(ns)?;
        if !svc.metadata.namespace.is_empty() && svc.metadata.namespace != ns {
            return Err(ApiError::invalid(format!(
                "metadata.namespace {:?} does not match the project {ns:?} in the URL",
                svc.metadata.namespace
            )));
        }
        let name = svc.metadata.name.clone();
        validate_service_name(&name).map_err(at("metadata.name"))?;
        if svc.kind != "Service" || svc.api_version != SERVING_API_VERSION {
            return Err(ApiError::invalid(format!(
                "apiVersion, kind: expected {SERVING_API_VERSION} Service, got {} {}",
                svc.api_version, svc.kind
            )));
        }
        let settings = template_settings(&svc.spec.template)?;
        crate::secrets::check_refs(
            self.serving.secrets(),
            ns,
            &settings.secret_refs(),
            "spec.template.spec",
        )?;
        crate::secrets::check_host_dirs(
            self.serving.host_dirs(),
            &settings.all_host_volumes(),
            "spec.template.spec",
        )?;
        let pulled = self
            .pull_if_remote(&settings.image, "spec.template.spec.containers[0].image")
            .await?;
        let was_pulled = pulled.is_some();
        let wanted = pulled.map_or(settings.image.clone(), |p| p.digest);
        let image = self.images.resolve(&wanted).map_err(|e| match e {
            skiff_image::ImageError::NotFound { .. } => ApiError::invalid(format!(
                "spec.template.spec.containers[0].image: image {} is not in the image store: import it with `skiff images import PATH --name {}`",
                settings.image, settings.image
            )),
            e => e.into(),
        })?;
        let (sidecar_images, container_statuses) = self
            .pull_sidecar_images(&settings, &svc.spec.template)
            .await?;
        svc.metadata
            .labels
            .insert(LABEL_LOCATION.into(), REGION.into());
        // Cloud Run's default, which clients that send no traffic (gcloud) rely on.
        if svc.spec.traffic.is_empty() {
            svc.spec.traffic = vec![TrafficTarget {
                latest_revision: Some(true),
                percent: Some(100),
                ..Default::default()
            }];
        }
        let pinned_ingress = format!("{}@{}", image_name(&settings.image), image.digest);
        let _guard = self.lock(ns, &name).await;
        let old = self.store.get_service(ns, &name)?;
        match (&old, create) {
            (Some(_), true) => {
                return Err(ApiError::conflict(format!(
                    "service {name} already exists in project {ns}"
                )))
            }
            (None, false) => {
                return Err(ApiError::not_found(format!(
                    "service {name} not found in project {ns}"
                )))
            }
            _ => {}
        }
        let revisions = self.store.list_revisions(Some(ns), Some(&name))?;
        // A tag that now names another image than the latest revision runs is a new revision,
        // as `gcloud run deploy --image` of a moved tag is on Cloud Run: a registry tag just
        // pulled, or a tag in the store that a push to Skiff's registry or an import moved.
        // Likewise a sidecar's. A revision stored without a pinned digest is compared only
        // when its image was pulled (it cannot tell whether a store tag moved).
        let latest = old
            .as_ref()
            .and_then(|o| o.status.as_ref()?.latest_created_revision_name.clone())
            .and_then(|latest| revisions.iter().find(|r| r.metadata.name == latest))
            .and_then(|r| r.status.as_ref());
        let tag_moved = latest.is_some_and(|st| {
            let ingress_moved = (was_pulled || st.image_digest.is_some())
                && st.image_digest.as_deref() != Some(&*pinned_ingress);
            let sidecar_moved = container_statuses.iter().any(|c| {
                let pinned = st.container_digest(&c.status.name);
                (c.pulled || pinned.is_some()) && pinned != c.status.image_digest.as_deref()
            });
            ingress_moved || sidecar_moved
        });
        // Replacing a service with what it already is (say, its own export) changes nothing,
        // as in Kubernetes: no new generation, no new revision, no route change.
        if let Some(o) = old.as_ref().filter(|o| {
            !tag_moved
                && o.spec == svc.spec
                && o.metadata.labels == svc.metadata.labels
                && o.metadata.annotations == svc.metadata.annotations
        }) {
            return Ok(o.clone());
        }
        let template_changed = tag_moved
            || old.as_ref().is_none_or(|o| {
                let mut a = o.spec.template.clone();
                let mut b = svc.spec.template.clone();
                a.metadata.name.clear();
                b.metadata.name.clear();
                a != b
                    || !svc.spec.template.metadata.name.is_empty()
                        && svc.spec.template.metadata.name != o.spec.template.metadata.name
            });
        let generation = old.as_ref().map_or(1, |o| o.metadata.generation + 1);

        // The new revision's name: given in the template, or SERVICE-NNNNN-xxx.
        let rev_name = if template_changed {
            let given = svc.spec.template.metadata.name.clone();
            let n = if given.is_empty() {
                revision_name(&name, generation)
            } else {
                if !given.starts_with(&format!("{name}-")) {
                    return Err(ApiError::invalid(format!(
                        "spec.template.metadata.name: revision name {given:?} must start with the service name followed by '-' ({name}-...)"
                    )));
                }
                validate_name("revision", &given, 63).map_err(at("spec.template.metadata.name"))?;
                given
            };
            if revisions.iter().any(|r| r.metadata.name == n) {
                return Err(ApiError::conflict(format!(
                    "revision {n} already exists: give the template another name or none"
                )));
            }
            Some(n)
        } else {
            None
        };
        self.validate_traffic(&svc.spec.traffic, &revisions, rev_name.as_deref())?;
        skiff_model::Ingress::of(&svc.metadata.annotations).map_err(|e| {
            ApiError::invalid(format!(
                "metadata.annotations[\"{}\"]: {}",
                skiff_model::ANN_INGRESS,
                e.0
            ))
        })?;

        let now = now_rfc3339();
        svc.metadata.namespace = ns.to_string();
        svc.metadata.generation = generation;
        svc.metadata.resource_version = generation.to_string();
        match &old {
            Some(o) => {
                svc.metadata.uid = o.metadata.uid.clone();
                svc.metadata.creation_timestamp = o.metadata.creation_timestamp.clone();
            }
            None => {
                svc.metadata.uid = skiff_model::new_uuid();
                svc.metadata.creation_timestamp = Some(now.clone());
            }
        }
        let mut status = old
            .as_ref()
            .and_then(|o| o.status.clone())
            .unwrap_or_default();
        status.url = Some(self.url(ns, &name, None));
        status.address = Some(Addressable {
            url: self.url(ns, &name, None),
        });
        let Some(rev_name) = rev_name else {
            // Only traffic or metadata changed: no new revision, the route moves now.
            svc.status = Some(status);
            self.store.put_service(&svc)?;
            drop(_guard);
            return self.reconcile(ns, &name).await;
        };
        status.latest_created_revision_name = Some(rev_name.clone());
        let starting = format!("Revision {rev_name} is starting");
        for c in [READY, CONFIGURATIONS_READY, ROUTES_READY] {
            set_condition(
                &mut status.conditions,
                Condition::new(c, "Unknown", Some("Deploying"), Some(starting.clone())),
            );
        }
        svc.status = Some(status);

        let mut rev = Revision {
            api_version: SERVING_API_VERSION.into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: rev_name.clone(),
                namespace: ns.to_string(),
                uid: skiff_model::new_uuid(),
                generation: 1,
                resource_version: "1".into(),
                creation_timestamp: Some(now),
                labels: svc.spec.template.metadata.labels.clone(),
                annotations: svc.spec.template.metadata.annotations.clone(),
            },
            spec: svc.spec.template.spec.clone(),
            status: Some(RevisionStatus {
                observed_generation: 1,
                conditions: vec![Condition::new("Ready", "Unknown", Some("Deploying"), None)],
                image_digest: Some(pinned_ingress),
                log_url: None,
                container_statuses: container_statuses.into_iter().map(|c| c.status).collect(),
            }),
        };
        rev.metadata
            .labels
            .insert(LABEL_SERVICE.into(), name.clone());
        rev.metadata
            .labels
            .insert(LABEL_LOCATION.into(), REGION.into());
        rev.metadata
            .labels
            .insert(LABEL_CONFIGURATION.into(), name.clone());
        rev.metadata.labels.insert(
            LABEL_CONFIGURATION_GENERATION.into(),
            generation.to_string(),
        );
        self.store.put_service_with_revision(&svc, &rev)?;
        let key = RevKey {
            namespace: ns.to_string(),
            service: name.clone(),
            revision: rev_name,
        };
        self.serving
            .add_revision(key.clone(), settings, image, sidecar_images);
        drop(_guard);
        self.warm(key);
        Ok(svc)
    }

    fn validate_traffic(
        &self,
        traffic: &[TrafficTarget],
        revisions: &[Revision],
        new_rev: Option<&str>,
    ) -> ApiResult<()> {
        if traffic.is_empty() {
            return Ok(());
        }
        let mut total = 0u32;
        let mut tags = std::collections::HashSet::new();
        for (i, t) in traffic.iter().enumerate() {
            let latest = t.latest_revision.unwrap_or(false);
            match (&t.revision_name, latest) {
                (Some(_), true) => {
                    return Err(ApiError::invalid(format!(
                        "spec.traffic[{i}] names a revision and latestRevision: give one"
                    )))
                }
                (None, false) => {
                    return Err(ApiError::invalid(format!(
                        "spec.traffic[{i}] needs revisionName or latestRevision: true"
                    )))
                }
                (Some(r), false) => {
                    if !revisions.iter().any(|x| &x.metadata.name == r)
                        && Some(r.as_str()) != new_rev
                    {
                        return Err(ApiError::invalid(format!(
                            "spec.traffic[{i}].revisionName: revision {r} does not exist"
                        )));
                    }
                }
                (None, true) => {}
            }
            let p = t.percent.unwrap_or(0);
            if p > 100 {
                return Err(ApiError::invalid(format!(
                    "spec.traffic[{i}].percent: {p} is above 100"
                )));
            }
            total += p;
            if let Some(tag) = &t.tag {
                validate_tag(tag)
                    .map_err(|e| ApiError::invalid(format!("spec.traffic[{i}].tag: {e}")))?;
                if !tags.insert(tag.clone()) {
                    return Err(ApiError::invalid(format!(
                        "spec.traffic[{i}].tag: tag {tag} is given twice"
                    )));
                }
            }
        }
        if total != 100 {
            return Err(ApiError::invalid(format!(
                "spec.traffic: percents add up to {total}, not 100"
            )));
        }
        Ok(())
    }

    /// Starts one instance of a new revision and, once it listens, records the revision as
    /// ready and moves traffic as the service's spec says.
    fn warm(self: &Arc<Self>, key: RevKey) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.checks.clone().acquire_owned().await else {
                return;
            };
            let Some(pool) = this.serving.pool(&key) else {
                return;
            };
            let limit = pool.settings.startup_limit().max(STARTUP_TIMEOUT);
            let deadline = Instant::now() + limit + Duration::from_secs(10);
            let result = pool.acquire(deadline, limit).await.map(drop);
            let cond = match &result {
                Ok(()) => Condition::new("Ready", "True", None, None),
                Err(e) => {
                    let msg = match e {
                        skiff_serving::pool::AcquireError::StartFailed(why) => why.clone(),
                        other => format!("{other:?}"),
                    };
                    Condition::new(
                        "Ready",
                        "False",
                        Some("ContainerFailed"),
                        Some(format!("Revision {} is not ready: {msg}", key.revision)),
                    )
                }
            };
            if let Err(e) = this.set_revision_condition(&key, cond).await {
                tracing::error!("recording readiness of {}: {e:?}", key.revision);
            }
            if let Err(e) = this.reconcile(&key.namespace, &key.service).await {
                tracing::error!("routing {}: {e:?}", key.service);
            }
        });
    }

    async fn set_revision_condition(&self, key: &RevKey, cond: Condition) -> ApiResult<()> {
        let _guard = self.lock(&key.namespace, &key.service).await;
        if let Some(mut rev) = self.store.get_revision(&key.namespace, &key.revision)? {
            let status = rev.status.get_or_insert_with(Default::default);
            set_condition(&mut status.conditions, cond);
            self.store.put_revision(&rev)?;
        }
        Ok(())
    }

    /// Recomputes a service's route and status from the store and applies the route.
    pub async fn reconcile(&self, ns: &str, name: &str) -> ApiResult<Service> {
        let _guard = self.lock(ns, name).await;
        let mut svc = self.store.get_service(ns, name)?.ok_or_else(|| {
            ApiError::not_found(format!("service {name} not found in project {ns}"))
        })?;
        let revisions = self.store.list_revisions(Some(ns), Some(name))?;
        let policy = self.store.get_policy(ns, name)?;
        let public = policy.as_ref().is_some_and(|p| p.is_public());
        let invokers = policy.map(|p| p.invokers()).unwrap_or_default();
        let latest_ready = revisions
            .iter()
            .filter(|r| revision_ready(r) == Some(true))
            .max_by_key(|r| {
                r.metadata
                    .labels
                    .get(LABEL_CONFIGURATION_GENERATION)
                    .and_then(|g| g.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .map(|r| r.metadata.name.clone());
        let mut status = svc.status.clone().unwrap_or_default();
        let latest_created = status.latest_created_revision_name.clone();
        let created_rev = revisions
            .iter()
            .find(|r| Some(&r.metadata.name) == latest_created.as_ref());
        let created_state = created_rev.and_then(revision_ready);

        // Resolve traffic: an empty spec means 100 % to the latest ready revision.
        let targets = if svc.spec.traffic.is_empty() {
            vec![TrafficTarget {
                latest_revision: Some(true),
                percent: Some(100),
                ..Default::default()
            }]
        } else {
            svc.spec.traffic.clone()
        };
        let mut resolved = Vec::new();
        let mut unresolved = false;
        for t in &targets {
            let rev = if t.latest_revision == Some(true) {
                latest_ready.clone()
            } else {
                t.revision_name.clone()
            };
            match rev {
                Some(r) => resolved.push(TrafficTarget {
                    revision_name: Some(r),
                    latest_revision: t.latest_revision,
                    percent: t.percent,
                    tag: t.tag.clone(),
                    url: t.tag.as_ref().map(|tag| self.url(ns, name, Some(tag))),
                }),
                None => unresolved = true,
            }
        }
        let route = RouteSpec {
            public,
            internal: skiff_model::Ingress::of(&svc.metadata.annotations)
                .unwrap_or_default()
                .internal_only(),
            invokers,
            traffic: resolved
                .iter()
                .filter(|t| t.percent.unwrap_or(0) > 0)
                .map(|t| {
                    (
                        t.revision_name.clone().unwrap_or_default(),
                        t.percent.unwrap_or(0),
                    )
                })
                .collect(),
            tags: resolved
                .iter()
                .filter_map(|t| Some((t.tag.clone()?, t.revision_name.clone()?)))
                .collect(),
        };
        // Revisions named by the route must be loaded (they are, unless their image vanished).
        if let Err(why) = self.serving.set_route(ns, name, &route) {
            unresolved = true;
            tracing::warn!("route of {ns}/{name}: {why}");
        }
        status.traffic = resolved;
        status.latest_ready_revision_name = latest_ready;
        // Services stored before Skiff labelled its region get the label here (on start-up).
        svc.metadata
            .labels
            .insert(LABEL_LOCATION.into(), REGION.into());
        status.url = Some(self.url(ns, name, None));
        status.address = Some(Addressable {
            url: self.url(ns, name, None),
        });
        // ConfigurationsReady: the latest created revision; RoutesReady: every traffic target
        // is served; Ready: both (as Knative reports them, and gcloud shows them as stages).
        let configuration = match created_state {
            Some(true) => Condition::new(CONFIGURATIONS_READY, "True", None, None),
            Some(false) => Condition::new(
                CONFIGURATIONS_READY,
                "False",
                Some("RevisionFailed"),
                created_rev.map(revision_message),
            ),
            None => Condition::new(
                CONFIGURATIONS_READY,
                "Unknown",
                Some("Deploying"),
                latest_created
                    .as_ref()
                    .map(|r| format!("Revision {r} is starting")),
            ),
        };
        let routes = if !unresolved {
            Condition::new(ROUTES_READY, "True", None, None)
        } else if created_state.is_none() {
            Condition::new(
                ROUTES_READY,
                "Unknown",
                Some("Deploying"),
                Some("waiting for a revision to be ready".to_string()),
            )
        } else {
            Condition::new(
                ROUTES_READY,
                "False",
                Some("TrafficNotRouted"),
                Some(
                    "a traffic target names a revision that cannot serve, or no revision is ready"
                        .to_string(),
                ),
            )
        };
        let ready = match (configuration.status.as_str(), routes.status.as_str()) {
            ("True", "True") => Condition::new(READY, "True", None, None),
            ("False", _) => Condition::new(
                READY,
                "False",
                configuration.reason.as_deref(),
                configuration.message.clone(),
            ),
            (_, "False") => Condition::new(
                READY,
                "False",
                routes.reason.as_deref(),
                routes.message.clone(),
            ),
            _ => Condition::new(
                READY,
                "Unknown",
                Some("Deploying"),
                configuration.message.clone(),
            ),
        };
        for c in [ready, configuration, routes] {
            set_condition(&mut status.conditions, c);
        }
        if created_state.is_some() {
            status.observed_generation = svc.metadata.generation;
        }
        svc.status = Some(status);
        self.store.put_service(&svc)?;
        Ok(svc)
    }

    pub async fn delete_service(&self, ns: &str, name: &str) -> ApiResult<Service> {
        let _guard = self.lock(ns, name).await;
        let svc = self.store.get_service(ns, name)?.ok_or_else(|| {
            ApiError::not_found(format!("service {name} not found in project {ns}"))
        })?;
        let revisions = self.store.list_revisions(Some(ns), Some(name))?;
        self.store.delete_service(ns, name)?;
        self.serving.remove_route(ns, name);
        self.serving
            .logs()
            .remove(ns, &skiff_serving::LogResource::Service(name.to_string()));
        let serving = self.serving.clone();
        let keys: Vec<RevKey> = revisions
            .iter()
            .map(|r| RevKey {
                namespace: ns.into(),
                service: name.into(),
                revision: r.metadata.name.clone(),
            })
            .collect();
        tokio::spawn(async move {
            for k in keys {
                serving.remove_revision(&k).await;
            }
        });
        Ok(svc)
    }

    pub async fn delete_revision(&self, ns: &str, rev_name: &str) -> ApiResult<Revision> {
        let rev = self.store.get_revision(ns, rev_name)?.ok_or_else(|| {
            ApiError::not_found(format!("revision {rev_name} not found in project {ns}"))
        })?;
        let service = rev
            .metadata
            .labels
            .get(LABEL_SERVICE)
            .cloned()
            .unwrap_or_default();
        let _guard = self.lock(ns, &service).await;
        if let Some(svc) = self.store.get_service(ns, &service)? {
            let status = svc.status.unwrap_or_default();
            let targets: Vec<&TrafficTarget> = status
                .traffic
                .iter()
                .filter(|t| t.revision_name.as_deref() == Some(rev_name))
                .collect();
            let serving = targets.iter().any(|t| t.percent.unwrap_or(0) > 0);
            let tags: Vec<&str> = targets.iter().filter_map(|t| t.tag.as_deref()).collect();
            let latest = status.latest_created_revision_name.as_deref() == Some(rev_name);
            if !serving && !latest && !tags.is_empty() {
                let tags = tags.join(",");
                return Err(ApiError::precondition(format!(
                    "revision {rev_name} of service {service} is tagged {tags} and answers at its tag URL: remove the tag first (services update-traffic {service} --remove-tags {tags})"
                )));
            }
            if serving || latest {
                return Err(ApiError::precondition(format!(
                    "revision {rev_name} serves traffic or is the latest of service {service}: move traffic away first (services update-traffic)"
                )));
            }
        }
        self.store.delete_revision(ns, rev_name)?;
        let key = RevKey {
            namespace: ns.into(),
            service,
            revision: rev_name.into(),
        };
        self.serving.remove_revision(&key).await;
        Ok(rev)
    }

    pub async fn set_policy(&self, ns: &str, name: &str, policy: Policy) -> ApiResult<Policy> {
        {
            let _guard = self.lock(ns, name).await;
            if self.store.get_service(ns, name)?.is_none() {
                return Err(ApiError::not_found(format!(
                    "service {name} not found in project {ns}"
                )));
            }
            let mut p = policy;
            p.etag = Some(skiff_model::new_uuid());
            p.version = Some(p.version.unwrap_or(1));
            self.store.put_policy(ns, name, &p)?;
        }
        self.reconcile(ns, name).await?;
        Ok(self.store.get_policy(ns, name)?.unwrap_or_default())
    }

    /// The images of a revision's sidecars, in their order: each pulled first when it names a
    /// registry (a tag resolves to what the registry has now), then taken from the image
    /// store; with the digest each is pinned to, for the revision's `containerStatuses`.
    async fn pull_sidecar_images(
        &self,
        settings: &RevisionSettings,
        template: &RevisionTemplate,
    ) -> ApiResult<(Vec<skiff_image::ResolvedImage>, Vec<PinnedSidecar>)> {
        let mut images = Vec::new();
        let mut pinned = Vec::new();
        for c in &settings.sidecars {
            let index = template
                .spec
                .containers
                .iter()
                .position(|t| t.name.as_deref() == Some(c.name.as_str()))
                .unwrap_or_default();
            let field = format!("spec.template.spec.containers[{index}].image");
            let pulled = self.pull_if_remote(&c.image, &field).await?;
            let was_pulled = pulled.is_some();
            let wanted = pulled.map_or(c.image.clone(), |p| p.digest);
            let img = self.sidecar_image(&c.name, &c.image, &wanted)?;
            pinned.push(PinnedSidecar {
                status: ContainerStatus {
                    name: c.name.clone(),
                    image_digest: Some(format!("{}@{}", image_name(&c.image), img.digest)),
                },
                pulled: was_pulled,
            });
            images.push(img);
        }
        Ok((images, pinned))
    }

    /// Sidecar `name`'s image `wanted` (its reference `image`, or the digest it is pinned
    /// to) from the image store.
    fn sidecar_image(
        &self,
        name: &str,
        image: &str,
        wanted: &str,
    ) -> ApiResult<skiff_image::ResolvedImage> {
        self.images.resolve(wanted).map_err(|e| match e {
            skiff_image::ImageError::NotFound { .. } => ApiError::invalid(format!(
                "spec.template.spec.containers: sidecar {name}: image {image} is not in the image store: import it with `skiff images import PATH --name {image}`"
            )),
            e => e.into(),
        })
    }

    /// Loads every stored service into the serving plane after a (re)start. Revisions whose
    /// deploy was interrupted are warmed again.
    pub async fn restore(self: &Arc<Self>) -> ApiResult<()> {
        for svc in self.store.list_services(None)? {
            let ns = svc.metadata.namespace.clone();
            let name = svc.metadata.name.clone();
            for rev in self.store.list_revisions(Some(&ns), Some(&name))? {
                let key = RevKey {
                    namespace: ns.clone(),
                    service: name.clone(),
                    revision: rev.metadata.name.clone(),
                };
                let template = RevisionTemplate {
                    metadata: rev.metadata.clone(),
                    spec: rev.spec.clone(),
                };
                let loaded = RevisionSettings::from_template(&template)
                    .map_err(|e| e.0)
                    .and_then(|s| {
                        let pinned = rev
                            .status
                            .as_ref()
                            .and_then(|st| st.image_digest.clone())
                            .unwrap_or(s.image.clone());
                        let digest = pinned
                            .rsplit_once('@')
                            .map_or(pinned.as_str(), |(_, d)| d)
                            .to_string();
                        // Each sidecar runs the digest its revision pinned, never a moved tag.
                        let sidecars = s
                            .sidecars
                            .iter()
                            .map(|c| {
                                let pinned = rev
                                    .status
                                    .as_ref()
                                    .and_then(|st| st.container_digest(&c.name))
                                    .and_then(|d| d.rsplit_once('@'))
                                    .map_or(c.image.as_str(), |(_, d)| d);
                                self.sidecar_image(&c.name, &c.image, pinned)
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| e.message)?;
                        self.images
                            .resolve(&digest)
                            .map(|img| (s, img, sidecars))
                            .map_err(|e| e.to_string())
                    });
                match loaded {
                    Ok((settings, image, sidecars)) => {
                        self.serving
                            .add_revision(key.clone(), settings, image, sidecars);
                        if revision_ready(&rev).is_none() {
                            self.warm(key);
                        }
                    }
                    Err(why) => {
                        tracing::warn!("revision {} cannot be loaded: {why}", rev.metadata.name);
                        let cond =
                            Condition::new("Ready", "False", Some("ImageMissing"), Some(why));
                        self.set_revision_condition(&key, cond).await?;
                    }
                }
            }
            self.reconcile(&ns, &name).await?;
        }
        Ok(())
    }
}

const READY: &str = "Ready";
const CONFIGURATIONS_READY: &str = "ConfigurationsReady";
const ROUTES_READY: &str = "RoutesReady";

/// Prefixes an input error with the field at fault (`metadata.name: invalid service name ...`).
fn at(field: &'static str) -> impl Fn(InvalidInput) -> ApiError {
    move |e| ApiError::invalid(format!("{field}: {}", e.0))
}

/// Reads a service's revision template; an error names the field at fault.
fn template_settings(t: &RevisionTemplate) -> ApiResult<RevisionSettings> {
    match t.spec.containers.as_slice() {
        [] => {
            return Err(ApiError::invalid(
                "spec.template.spec.containers: the revision template has no container: give one with an image",
            ))
        }
        [c, ..] if c.image.trim().is_empty() => {
            return Err(ApiError::invalid(
                "spec.template.spec.containers[0].image: the container has no image: give an image imported with `skiff images import`",
            ))
        }
        _ => {}
    }
    RevisionSettings::from_template(t).map_err(|e| {
        if t.spec.containers.len() > 1 {
            return ApiError::invalid(format!("spec.template.spec.containers: {}", e.0));
        }
        ApiError::invalid(skiff_model::template_error(&e))
    })
}

/// A sidecar's image as a new revision pins it, and whether it was pulled from a registry
/// for this deploy (a pulled tag that now names another digest makes a new revision).
struct PinnedSidecar {
    status: ContainerStatus,
    pulled: bool,
}

/// `name:tag` → `name` (the part a digest is appended to).
fn image_name(reference: &str) -> &str {
    let r = reference.split('@').next().unwrap_or(reference);
    match r.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => n,
        _ => r,
    }
}
