//! The serving plane: revision pools of instances, the in-memory route table, and the ingress
//! reverse proxy that puts requests on instances.
//!
//! The control plane (the API crate) tells it what exists — [`Serving::add_revision`],
//! [`Serving::set_route`], [`Serving::remove_revision`] — and reads back what runs
//! ([`Serving::instances`]). The request path ([`proxy`]) only reads the route table and the
//! pools; it never waits on the store or on an API call.

pub mod auth;
mod ingress;
pub mod pool;
pub mod probe;
pub mod proxy;
mod reqlog;
pub mod trace;
pub mod upstream;

use pool::{Ctx, InstanceInfo, Pool, RevKey};
use rand::Rng;
use skiff_image::ResolvedImage;
use skiff_model::RevisionSettings;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use ingress::{serve_ingress, IngressLimits};
pub use skiff_runtime::logs::{self, LogLine, LogResource, LogSink, LogSource};

pub struct ServingConfig {
    pub data_dir: PathBuf,
    /// The binary that runs `__shim` (the server's own executable).
    pub shim_exe: PathBuf,
    pub scale_to_zero_after: Duration,
    /// Secret for identity tokens.
    pub token_secret: Vec<u8>,
    pub meters: Arc<skiff_metering::Registry>,
    pub metrics: Arc<skiff_metering::Metrics>,
    /// Instance networking; `None`: instances get loopback only.
    pub network: Option<Arc<skiff_network::Network>>,
    /// Where instances' output and request entries go.
    pub logs: Arc<LogSink>,
    /// Secrets, resolved into each instance as it starts.
    pub secrets: Arc<skiff_secrets::SecretStore>,
    /// Host directories (canonical) that revisions and jobs may mount read-only.
    pub host_dirs: Vec<PathBuf>,
}

/// Where a service's traffic goes, as the control plane resolved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    pub public: bool,
    /// Only Skiff's own instances and job tasks may reach the service (its ingress setting
    /// is `internal` or `internal-and-cloud-load-balancing`).
    pub internal: bool,
    /// Members that hold `roles/run.invoker` on the service (`serviceAccount:EMAIL`,
    /// `user:EMAIL`, `allAuthenticatedUsers`, ...), for identity tokens other than the admin's.
    pub invokers: Vec<String>,
    /// `(revision, percent)`; percents add up to 100.
    pub traffic: Vec<(String, u32)>,
    /// `(tag, revision)`.
    pub tags: Vec<(String, String)>,
}

pub struct Route {
    pub public: bool,
    pub internal: bool,
    pub invokers: Vec<String>,
    targets: Vec<(Arc<Pool>, u32)>,
    tags: HashMap<String, Arc<Pool>>,
}

impl Route {
    /// A revision by weighted chance.
    fn pick(&self) -> Option<Arc<Pool>> {
        let total: u32 = self.targets.iter().map(|(_, p)| *p).sum();
        if total == 0 {
            return None;
        }
        let mut n = rand::thread_rng().gen_range(0..total);
        for (pool, p) in &self.targets {
            if n < *p {
                return Some(pool.clone());
            }
            n -= p;
        }
        None
    }
}

pub struct Serving {
    ctx: Arc<Ctx>,
    routes: RwLock<HashMap<(String, String), Arc<Route>>>,
    pools: Mutex<HashMap<RevKey, Arc<Pool>>>,
    keys: auth::TokenKeys,
    host_dirs: Vec<PathBuf>,
}

impl Serving {
    pub fn new(cfg: ServingConfig) -> Arc<Serving> {
        let run = cfg.data_dir.join("run");
        let ctx = Arc::new(Ctx {
            shim_exe: cfg.shim_exe,
            instances_dir: run.join("i"),
            state_root: run.join("state"),
            logs: cfg.logs,
            scale_to_zero_after: cfg.scale_to_zero_after,
            netns: RwLock::new(HashMap::new()),
            meters: cfg.meters,
            metrics: cfg.metrics,
            network: cfg.network,
            secrets: cfg.secrets,
        });
        let host_dirs = cfg.host_dirs;
        let serving = Arc::new(Serving {
            ctx,
            routes: RwLock::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            keys: auth::TokenKeys::new(&cfg.token_secret),
            host_dirs,
        });
        let weak = Arc::downgrade(&serving);
        tokio::spawn(async move {
            // Ten load samples a second; the autoscaler ticks on every tenth.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                n += 1;
                for p in s.all_pools() {
                    // The tick samples once itself.
                    if n.is_multiple_of(10) {
                        p.reconcile();
                    } else {
                        p.sample();
                    }
                }
            }
        });
        serving
    }

    /// The directory instances live in (for the start-up sweep).
    pub fn instances_dir(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("run").join("i")
    }

    pub fn logs(&self) -> &Arc<LogSink> {
        &self.ctx.logs
    }

    /// Host directories (canonical paths) revisions and jobs may mount, with what is below.
    pub fn host_dirs(&self) -> &[PathBuf] {
        &self.host_dirs
    }

    /// The secret store instances resolve their secret references from.
    pub fn secrets(&self) -> &skiff_secrets::SecretStore {
        &self.ctx.secrets
    }

    fn all_pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn route(&self, ns: &str, service: &str) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), service.to_string()))
            .cloned()
    }

    /// Registers a revision (idempotent) and returns its pool; no instance starts yet.
    /// `sidecar_images` are the images of `settings.sidecars`, in their order.
    pub fn add_revision(
        &self,
        key: RevKey,
        settings: RevisionSettings,
        image: ResolvedImage,
        sidecar_images: Vec<ResolvedImage>,
    ) -> Arc<Pool> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_insert_with(|| Pool::new(key, settings, image, sidecar_images, self.ctx.clone()))
            .clone()
    }

    pub fn pool(&self, key: &RevKey) -> Option<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Stops a revision's instances and forgets it.
    pub async fn remove_revision(&self, key: &RevKey) {
        let pool = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(p) = pool {
            p.close().await;
            self.ctx
                .metrics
                .forget_revision(&key.namespace, &key.service, &key.revision);
        }
    }

    /// Updates the instance-count and queue-depth gauges from the pools as they are now.
    pub fn refresh_metrics(&self) {
        const STATES: [&str; 4] = ["starting", "active", "idle", "draining"];
        let pools = self.all_pools();
        let counts: Vec<_> = pools.iter().map(|p| (p, p.counts())).collect();
        let mut instances = Vec::new();
        let mut pending = Vec::new();
        for (p, (n, waiting)) in &counts {
            let k = &p.key;
            for (state, count) in STATES.iter().zip(n) {
                instances.push(skiff_metering::metrics::InstanceCount {
                    namespace: &k.namespace,
                    service: &k.service,
                    revision: &k.revision,
                    state,
                    count: *count,
                });
            }
            pending.push((
                k.namespace.as_str(),
                k.service.as_str(),
                k.revision.as_str(),
                *waiting,
            ));
        }
        self.ctx.metrics.set_instances(&instances, &pending);
    }

    /// Replaces a service's route. Every revision named must have been added.
    pub fn set_route(&self, ns: &str, service: &str, spec: &RouteSpec) -> Result<(), String> {
        let pool_of = |rev: &str| {
            self.pool(&RevKey {
                namespace: ns.to_string(),
                service: service.to_string(),
                revision: rev.to_string(),
            })
            .ok_or_else(|| format!("revision {rev} is not loaded"))
        };
        let targets = spec
            .traffic
            .iter()
            .map(|(r, p)| Ok((pool_of(r)?, *p)))
            .collect::<Result<Vec<_>, String>>()?;
        let tags = spec
            .tags
            .iter()
            .map(|(t, r)| Ok((t.clone(), pool_of(r)?)))
            .collect::<Result<HashMap<_, _>, String>>()?;
        let route = Arc::new(Route {
            public: spec.public,
            internal: spec.internal,
            invokers: spec.invokers.clone(),
            targets,
            tags,
        });
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_string(), service.to_string()), route);
        self.refresh_serving(ns, service);
        Ok(())
    }

    pub fn remove_route(&self, ns: &str, service: &str) {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_string(), service.to_string()));
        self.refresh_serving(ns, service);
    }

    /// Marks which of a service's pools receive traffic (min-instances applies to those).
    fn refresh_serving(&self, ns: &str, service: &str) {
        let route = self.route(ns, service);
        for p in self.all_pools() {
            if p.key.namespace == ns && p.key.service == service {
                let serving = route.as_ref().is_some_and(|r| {
                    r.targets
                        .iter()
                        .any(|(t, pct)| *pct > 0 && Arc::ptr_eq(t, &p))
                });
                p.set_serving(serving);
            }
        }
    }

    pub fn instances(&self, ns: &str, service: Option<&str>) -> Vec<InstanceInfo> {
        let mut out: Vec<InstanceInfo> = self
            .all_pools()
            .iter()
            .filter(|p| p.key.namespace == ns && service.is_none_or(|s| p.key.service == s))
            .flat_map(|p| p.instances())
            .collect();
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        out
    }

    pub fn mint_token(&self, audience: Option<&str>) -> String {
        self.keys.mint(auth::ADMIN_SUBJECT, audience)
    }

    /// Whether `token` is an unexpired identity token signed by this server whose subject is
    /// the admin (any audience).
    pub fn token_is_admin(&self, token: &str) -> bool {
        self.keys.subject_of(token).as_deref() == Some(auth::ADMIN_SUBJECT)
    }

    /// Mints a token for `subject` (a service account's email): an identity token when
    /// `audience` is given, else one that stands for an access token.
    pub fn mint_token_for(&self, subject: &str, audience: Option<&str>) -> String {
        self.keys.mint(subject, audience)
    }

    /// Stops every instance of every revision.
    pub async fn shutdown(&self) {
        let pools: Vec<_> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        futures::future::join_all(pools.iter().map(|p| p.close())).await;
    }
}
