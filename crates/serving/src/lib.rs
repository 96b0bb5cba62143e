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
mod wire;

use pool::{Ctx, InstanceInfo, Pool, RevKey};
use rand::Rng;
use skiff_image::ResolvedImage;
use skiff_model::RevisionSettings;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use ingress::{
    ingress_workers, serve_ingress, serve_ingress_tls, serve_ingress_workers, set_ingress_workers,
    IngressLimits,
};
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
    /// What the HTTPS listener serves and the HTTP listener redirects for.
    pub https: HttpsConfig,
    /// The host names services answer at (`--domain`).
    pub urls: skiff_model::ServiceUrls,
    /// How many revisions keep an instance made ahead of demand (`--prepared-instances`).
    pub prepared_instances: usize,
}

/// The HTTPS side of the ingress, shared by its listeners.
#[derive(Clone)]
pub struct HttpsConfig {
    /// Certificates by host name (and the user's `--tls-cert` as the default): the HTTPS
    /// listener's SNI resolver; a host they cover gets a redirect from plain HTTP.
    pub certs: Arc<skiff_tls::CertStore>,
    /// ACME HTTP-01 answers, served by the HTTP listener before any routing.
    pub http01: Arc<skiff_tls::Http01Challenges>,
    /// The HTTPS listener's port (`--https`), for redirects; `None`: no HTTPS listener, and
    /// plain HTTP is never redirected.
    pub port: Option<u16>,
}

impl Default for HttpsConfig {
    fn default() -> Self {
        HttpsConfig {
            certs: skiff_tls::CertStore::new(),
            http01: skiff_tls::Http01Challenges::new(),
            port: None,
        }
    }
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
    /// Mapped custom domains: domain → (namespace, service).
    domains: RwLock<Arc<HashMap<String, (String, String)>>>,
    pools: Mutex<HashMap<RevKey, Arc<Pool>>>,
    keys: auth::TokenKeys,
    host_dirs: Vec<PathBuf>,
    https: HttpsConfig,
    urls: skiff_model::ServiceUrls,
    /// Connections per client address, counted across the ingress listeners.
    clients: Arc<ingress::PerClient>,
    route_hook: RwLock<Option<RouteHook>>,
}

/// Called with the host names a service answers at (its own and one per tag) each time its
/// route is set; see [`Serving::set_route_hook`].
pub type RouteHook = Arc<dyn Fn(&[String]) + Send + Sync>;

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
            prepared_max: cfg.prepared_instances,
            prepared_used: Default::default(),
            runtime: tokio::runtime::Handle::current(),
        });
        let host_dirs = cfg.host_dirs;
        let serving = Arc::new(Serving {
            ctx,
            routes: RwLock::new(HashMap::new()),
            domains: RwLock::new(Arc::new(HashMap::new())),
            pools: Mutex::new(HashMap::new()),
            keys: auth::TokenKeys::new(&cfg.token_secret),
            host_dirs,
            https: cfg.https,
            urls: cfg.urls,
            clients: Arc::default(),
            route_hook: RwLock::new(None),
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

    /// The ingress's certificates by host name (what the HTTPS listener serves; ACME puts
    /// what it obtains here).
    pub fn certs(&self) -> &Arc<skiff_tls::CertStore> {
        &self.https.certs
    }

    /// The host names and URLs services get.
    pub fn urls(&self) -> &skiff_model::ServiceUrls {
        &self.urls
    }

    /// The ACME HTTP-01 answers the HTTP listener serves.
    pub fn http01(&self) -> &Arc<skiff_tls::Http01Challenges> {
        &self.https.http01
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

    /// The pools of one service (of a namespace, when `service` is `None`), picked under the
    /// lock: only those are cloned, so a deploy or a restore among 10 000 services does not
    /// touch every pool's reference count.
    fn pools_of(&self, ns: &str, service: Option<&str>) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| p.key.namespace == ns && service.is_none_or(|s| p.key.service == s))
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
        let hook = self
            .route_hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            let mut hosts = vec![self.urls.host(ns, service, None)];
            hosts.extend(
                spec.tags
                    .iter()
                    .map(|(t, _)| self.urls.host(ns, service, Some(t))),
            );
            hook(&hosts);
        }
        Ok(())
    }

    /// Replaces the table of mapped custom domains (domain, lower case without a port →
    /// `(namespace, service)`): a request whose `Host` is one goes to that service's route
    /// as its own URL's would.
    /// The route hook (see [`Serving::set_route_hook`]) is told of the domains that are new
    /// in the table, so their certificates are ordered as soon as they are mapped.
    pub fn set_domains(&self, table: HashMap<String, (String, String)>) {
        let old = std::mem::replace(
            &mut *self.domains.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(table.clone()),
        );
        let new: Vec<String> = table
            .keys()
            .filter(|d| !old.contains_key(*d))
            .cloned()
            .collect();
        let hook = self
            .route_hook
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some(hook), false) = (hook, new.is_empty()) {
            hook(&new);
        }
    }

    /// The mapping of a `Host` header value (any case, with or without a port or a trailing
    /// dot): `(domain, namespace, service)`.
    fn mapped_domain(&self, host: &str) -> Option<(String, String, String)> {
        let table = self
            .domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if table.is_empty() {
            return None;
        }
        let domain = skiff_tls::normalize_host(host);
        let (ns, service) = table.get(&domain)?.clone();
        Some((domain, ns, service))
    }

    /// Sets the hook told of a service's URL host names (`--domain`'s, else `localhost`'s)
    /// whenever its route is set (a deploy, a
    /// traffic change, a restart's restore); the server uses it to order their certificates
    /// as soon as a service exists. It must not block.
    pub fn set_route_hook(&self, hook: Option<RouteHook>) {
        *self.route_hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// Whether `host` (any case, with or without a port) is the URL host of a service (or of
    /// one of its tags) that has a route: under `--domain` its `SERVICE.DOMAIN` name (the
    /// `localhost` names it also answers at are left out), else its `localhost` name; or a
    /// mapped custom domain. What ACME asks before ordering a certificate for a name a client
    /// sent.
    pub fn routes_host(&self, host: &str) -> bool {
        if self.mapped_domain(host).is_some() {
            return true;
        }
        let host = skiff_tls::normalize_host(host);
        self.urls
            .parse(&host)
            .into_iter()
            .any(|(ns, service, tag)| {
                self.route(&ns, &service).is_some_and(|route| {
                    tag.as_ref().is_none_or(|t| route.tags.contains_key(t))
                        && self.urls.host(&ns, &service, tag.as_deref()) == host
                })
            })
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
        for p in self.pools_of(ns, Some(service)) {
            let serving = route.as_ref().is_some_and(|r| {
                r.targets
                    .iter()
                    .any(|(t, pct)| *pct > 0 && Arc::ptr_eq(t, &p))
            });
            p.set_serving(serving);
        }
    }

    pub fn instances(&self, ns: &str, service: Option<&str>) -> Vec<InstanceInfo> {
        let mut out: Vec<InstanceInfo> = self
            .pools_of(ns, service)
            .iter()
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

    /// The caller a bearer token stands for at the Pub/Sub API: its subject when it is signed
    /// by this server and names no audience or `https://pubsub.googleapis.com`.
    pub fn pubsub_subject(&self, token: &str) -> Option<String> {
        self.keys
            .access_subject(token, "https://pubsub.googleapis.com")
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
