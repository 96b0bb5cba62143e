//! One revision's instances: starting them on demand, handing each request an instance with
//! room for it (a [`Lease`]), and stopping instances that stay idle.
//!
//! All pool state sits behind one short-held mutex, never held across an await. Requests that
//! find no free slot wait in a bounded FIFO queue; a slot that frees up (a lease ends, an
//! instance becomes ready) goes straight to the request at its head.

use chrono::{DateTime, Utc};
use skiff_autoscaler::{instances_to_start, Bounds, Defaults, Demand, Kpa, KpaSettings};
use skiff_image::ResolvedImage;
use skiff_metering::metrics::RevisionMetrics;
use skiff_metering::{now_ms, Billing, LiveInstance, Meter};
use skiff_model::{RevisionSettings, PIDS_LIMIT};
use skiff_runtime::cgroup::CpuQuota;
use skiff_runtime::logs::{LogSink, LogSource};
use skiff_runtime::supervisor;
use skiff_runtime::InstanceConfig;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Give up on an instance whose port does not accept a connection by then (Cloud Run's
/// default startup probe).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(240);
/// SIGTERM, then SIGKILL after this long.
pub const STOP_GRACE: Duration = skiff_runtime::STOP_GRACE;
/// Lines of an instance's output kept to explain a failed start.
const LAST_LINES: usize = 5;
/// A queued request looks at the pool at least this often (to notice max-instances, a passed
/// deadline, or a slot it was not handed).
const QUEUE_CHECK: Duration = Duration::from_millis(500);
/// Most requests one revision's queue holds; more get 429 at once.
const QUEUE_MAX: u64 = 10_000;

/// What every pool shares: where instances live and how to start them.
pub struct Ctx {
    pub shim_exe: PathBuf,
    pub instances_dir: PathBuf,
    pub state_root: PathBuf,
    pub logs: Arc<LogSink>,
    pub scale_to_zero_after: Duration,
    /// Instance id → its network namespace, for the proxy's connector.
    pub netns: RwLock<HashMap<String, Arc<std::fs::File>>>,
    /// Every instance's billing meter.
    pub meters: Arc<skiff_metering::Registry>,
    pub metrics: Arc<skiff_metering::Metrics>,
    /// Instance networking; `None` when the server runs instances with loopback only.
    pub network: Option<Arc<skiff_network::Network>>,
    /// Where secret references resolve at each instance start.
    pub secrets: Arc<skiff_secrets::SecretStore>,
    /// Instances kept created ahead of demand, one per serving revision, at most this many
    /// across the server (`--prepared-instances`).
    pub prepared_max: usize,
    /// How many are made or being made now.
    pub prepared_used: std::sync::atomic::AtomicUsize,
    /// The server's main runtime. An instance's tasks (its start, supervision, probes and
    /// stop) run there even when a request on an ingress worker's runtime started it: they
    /// outlive any one connection, and a worker's runtime ends with the ingress.
    pub runtime: tokio::runtime::Handle,
}

impl Ctx {
    /// Takes a place for an instance made ahead of demand, if one is free.
    fn take_prepared_place(&self) -> bool {
        self.prepared_used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.prepared_max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_prepared_place(&self) {
        let _ = self
            .prepared_used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
}

/// An instance made ahead of demand: its shim has created the container (mount and network
/// namespaces, root filesystem, cgroup, `/etc` files), whose init waits for `start`. Taking
/// it leaves only the app's exec and its first accept on the request's path.
struct Prepared {
    id: String,
    cfg: InstanceConfig,
    /// Its network, held until the instance ends.
    lease: Option<skiff_network::Lease>,
    rt: supervisor::Instance,
    out: supervisor::Output,
}

impl Prepared {
    /// Removes it: the shim is told to stop, deletes the container and exits; the network
    /// goes once it has.
    async fn discard(self) {
        self.rt.stop(Duration::ZERO).await;
        drop(self.lease);
    }
}

/// How long a revision waits before making an instance ahead of demand again after failing
/// to.
const PREPARE_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RevKey {
    pub namespace: String,
    pub service: String,
    pub revision: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstState {
    Starting,
    Ready,
    Draining,
}

impl InstState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstState::Starting => "starting",
            InstState::Ready => "ready",
            InstState::Draining => "draining",
        }
    }
}

pub struct Inst {
    pub id: String,
    /// Its idle keep-alive connections from the ingress.
    pub upstream: Arc<crate::upstream::Upstream>,
    pub started_at: DateTime<Utc>,
    created: Instant,
    state: Mutex<InstState>,
    in_flight: AtomicU64,
    last_active: Mutex<Instant>,
    rt: OnceLock<supervisor::Instance>,
    last_lines: Mutex<VecDeque<String>>,
    meter: Arc<LiveInstance>,
    /// The CPU quota, for request-based instances (throttled while idle).
    quota: OnceLock<CpuQuota>,
    /// Whether the quota is at its throttled value now (changed under the meter's lock).
    throttled: AtomicBool,
}

impl Inst {
    pub fn state(&self) -> InstState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set_state(&self, s: InstState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
    fn idle_for(&self) -> Duration {
        self.last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
    /// Applies a lifecycle event to the meter, and throttles or restores the CPU to match: a
    /// request-based instance gets its CPU only while it is billable.
    fn meter_event(&self, f: impl FnOnce(&mut Meter, i64)) {
        self.meter.with_meter(|m| {
            f(m, now_ms());
            if let Some(q) = self.quota.get() {
                let t = m.throttled();
                if self.throttled.swap(t, Ordering::Relaxed) != t {
                    if let Err(e) = q.set_throttled(t) {
                        tracing::debug!(instance = self.id, "cpu quota: {e}");
                    }
                }
            }
        });
    }

    /// The number of requests in flight went from 0 to 1 or back.
    fn busy_changed(&self) {
        // Read under the meter's lock: whichever change comes last sets the final state.
        self.meter_event(|m, t| {
            m.set_busy(t, self.in_flight() > 0);
        });
    }

    /// The container is gone: the meter stops, with the cgroup's final reading.
    fn ended(&self) {
        let usage = self.rt.get().and_then(|r| r.final_usage());
        self.meter.end(now_ms(), usage);
    }

    fn remember(&self, line: &str) {
        let mut l = self.last_lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.len() == LAST_LINES {
            l.pop_front();
        }
        l.push_back(line.to_string());
    }
    fn last_output(&self) -> String {
        let l = self.last_lines.lock().unwrap_or_else(|e| e.into_inner());
        if l.is_empty() {
            String::new()
        } else {
            format!(
                "; last output: {}",
                l.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// A request's place in the queue: leaving `acquire` without an answer (a timeout, or the
/// request went away) takes it out.
struct Queued<'a> {
    pool: &'a Arc<Pool>,
    id: u64,
    done: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.pool.lock();
            st.queue.retain(|w| w.id != self.id);
            self.pool
                .waiting
                .store(st.queue.len() as u64, Ordering::SeqCst);
        }
    }
}

/// A request waiting for a slot; the slot (or why there is none) is sent to it.
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Result<Lease, AcquireError>>,
}

#[derive(Default)]
struct PoolState {
    instances: Vec<Arc<Inst>>,
    /// Requests waiting for a slot, oldest first.
    queue: VecDeque<Waiter>,
    next_waiter: u64,
    last_error: Option<String>,
    consecutive_failures: u32,
    backoff_until: Option<Instant>,
    closed: bool,
    /// The instance made ahead of demand, if there is one ready to be taken.
    prepared: Option<Prepared>,
    /// Whether one is being made.
    preparing: bool,
    /// No instance is made ahead of demand before this (after a failure).
    prepare_after: Option<Instant>,
}

impl PoolState {
    fn count(&self, s: InstState) -> u64 {
        self.instances.iter().filter(|i| i.state() == s).count() as u64
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireError {
    /// No instance could be started (503).
    StartFailed(String),
    /// The request's deadline passed while an instance was starting (504).
    Timeout,
    /// Every instance is busy at max-instances and the request waited too long (429).
    Overloaded,
    /// The revision is being removed (503).
    Closed,
}

pub struct Pool {
    pub key: RevKey,
    pub settings: RevisionSettings,
    pub image: ResolvedImage,
    /// The sidecars' images, in the order of `settings.sidecars`.
    pub sidecar_images: Vec<ResolvedImage>,
    ctx: Arc<Ctx>,
    state: Mutex<PoolState>,
    /// Whether a route sends traffic here; only then does min-instances hold instances.
    serving: AtomicBool,
    /// Requests in the queue (they count as demand); written under the state lock.
    waiting: AtomicU64,
    /// Knative's autoscaler for this revision, fed the load every second.
    kpa: Mutex<Kpa>,
    /// Start of this pool's clock (the autoscaler works in time since then).
    epoch: Instant,
    /// Load samples (in-flight plus waiting) since the last autoscaler tick: (sum, count).
    load: Mutex<(f64, u32)>,
    /// Leases handed out since the last sample: a request shorter than the sampling period
    /// still counts as activity.
    granted: AtomicU64,
    pub metrics: RevisionMetrics,
}

/// A request's claim on one slot of an instance; dropping it frees the slot, which goes to
/// the request at the head of the queue if there is one.
pub struct Lease {
    pool: Arc<Pool>,
    pub inst: Arc<Inst>,
    /// Set on a lease that could not be handed to a waiter: it is dropped under the pool's
    /// lock and must not dispatch again.
    quiet: bool,
}

impl Lease {
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Counts the lease as a request in the instance's usage (a deploy's warm-up is not one).
    pub fn count_request(&self) {
        self.inst.meter.request();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self
            .inst
            .last_active
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // Free the slot, then look at the queue (a waiter stores `waiting` before it looks at
        // the slots again: one of the two sees the other).
        self.inst.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.quiet && self.pool.waiting.load(Ordering::SeqCst) > 0 {
            let mut st = self.pool.lock();
            self.pool.dispatch(&mut st);
        }
        // After the hand-off, so that a slot passed on keeps the instance busy throughout.
        if self.inst.in_flight() == 0 {
            self.inst.busy_changed();
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub id: String,
    pub service: String,
    pub revision: String,
    pub state: String,
    pub started_at: String,
    pub in_flight: u64,
}

impl Pool {
    pub fn new(
        key: RevKey,
        settings: RevisionSettings,
        image: ResolvedImage,
        sidecar_images: Vec<ResolvedImage>,
        ctx: Arc<Ctx>,
    ) -> Arc<Pool> {
        let kpa = kpa_settings(&settings, &ctx, false);
        let metrics = ctx
            .metrics
            .revision(&key.namespace, &key.service, &key.revision);
        Arc::new(Pool {
            metrics,
            key,
            settings,
            image,
            sidecar_images,
            ctx,
            state: Mutex::new(PoolState::default()),
            serving: AtomicBool::new(false),
            waiting: AtomicU64::new(0),
            kpa: Mutex::new(Kpa::new(kpa)),
            epoch: Instant::now(),
            load: Mutex::new((0.0, 0)),
            granted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bounds(&self) -> Bounds {
        let min = if self.serving.load(Ordering::SeqCst) {
            self.settings.min_instances
        } else {
            0
        };
        Bounds {
            concurrency: self.settings.concurrency,
            min,
            max: self.settings.max_instances,
        }
    }

    pub fn set_serving(self: &Arc<Self>, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
        let k = kpa_settings(&self.settings, &self.ctx, serving);
        self.kpa
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_settings(k);
        self.reconcile();
    }

    fn current_load(&self, st: &PoolState) -> u64 {
        st.instances.iter().map(|i| i.in_flight()).sum::<u64>()
            + self.waiting.load(Ordering::SeqCst)
    }

    /// Takes one load sample (the serving plane calls this ten times a second).
    pub fn sample(&self) {
        let active = u64::from(self.granted.swap(0, Ordering::SeqCst) > 0);
        let load = self.current_load(&self.lock()).max(active) as f64;
        let mut acc = self.load.lock().unwrap_or_else(|e| e.into_inner());
        acc.0 += load;
        acc.1 += 1;
    }

    /// Instances by state (`starting`, `active`, `idle`, `draining`) and requests waiting, for
    /// the metrics.
    pub fn counts(&self) -> ([i64; 4], i64) {
        let mut n = [0i64; 4];
        for i in &self.lock().instances {
            let k = match i.state() {
                InstState::Starting => 0,
                InstState::Ready if i.in_flight() > 0 => 1,
                InstState::Ready => 2,
                InstState::Draining => 3,
            };
            n[k] += 1;
        }
        (n, self.waiting.load(Ordering::Relaxed) as i64)
    }

    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.lock()
            .instances
            .iter()
            .map(|i| InstanceInfo {
                id: i.id.clone(),
                service: self.key.service.clone(),
                revision: self.key.revision.clone(),
                state: i.state().as_str().to_string(),
                started_at: i
                    .started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                in_flight: i.in_flight(),
            })
            .collect()
    }

    /// Most requests the queue holds: ten times what max-instances can serve at once, at most
    /// [`QUEUE_MAX`].
    fn queue_capacity(&self) -> u64 {
        (self.settings.max_instances * self.settings.concurrency)
            .saturating_mul(10)
            .clamp(100, QUEUE_MAX)
    }

    /// Why a request cannot wait for an instance right now: none is starting and starts are
    /// backing off after a failure.
    fn start_blocked(&self, st: &PoolState) -> Option<AcquireError> {
        let backing_off = st.backoff_until.is_some_and(|t| t > Instant::now());
        if backing_off && st.count(InstState::Starting) == 0 && self.pick(st).is_none() {
            return st.last_error.clone().map(AcquireError::StartFailed);
        }
        None
    }

    /// Every instance is busy at max-instances and none is starting.
    fn at_max(&self, st: &PoolState) -> bool {
        st.count(InstState::Starting) == 0
            && st.count(InstState::Ready) >= self.settings.max_instances
            && self.pick(st).is_none()
    }

    /// Waits for a slot on a ready instance, starting instances as demand requires.
    /// `deadline` bounds the whole wait; `queue_limit` bounds the wait once the pool is at
    /// max-instances with every instance busy.
    pub async fn acquire(
        self: &Arc<Self>,
        deadline: Instant,
        queue_limit: Duration,
    ) -> Result<Lease, AcquireError> {
        let (id, mut rx) = {
            let mut st = self.lock();
            if st.closed {
                return Err(AcquireError::Closed);
            }
            // A free slot goes to the queue first; with none queued, take it now.
            if st.queue.is_empty() {
                if let Some(lease) = self.try_lease(&st) {
                    return Ok(lease);
                }
            }
            if let Some(e) = self.start_blocked(&st) {
                return Err(e);
            }
            if st.queue.len() as u64 >= self.queue_capacity() {
                return Err(AcquireError::Overloaded);
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            st.queue.push_back(Waiter { id, tx });
            self.waiting.store(st.queue.len() as u64, Ordering::SeqCst);
            self.scale_up(&mut st);
            // A slot freed since the look above was handed to nobody: take it now.
            self.dispatch(&mut st);
            (id, rx)
        };
        // A request that goes away while queued (the client hung up) leaves the queue.
        let mut queued = Queued {
            pool: self,
            id,
            done: false,
        };
        let mut at_max_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut until = deadline.min(now + QUEUE_CHECK);
            if let Some(since) = at_max_since {
                until = until.min(since + queue_limit);
            }
            tokio::select! {
                r = &mut rx => {
                    queued.done = true;
                    return r.unwrap_or(Err(AcquireError::Closed));
                }
                _ = tokio::time::sleep_until(until.into()) => {}
            }
            let mut st = self.lock();
            self.scale_up(&mut st);
            self.dispatch(&mut st);
            if !st.queue.iter().any(|w| w.id == id) {
                // Served (or failed) while this waiter slept: the answer is in the channel.
                drop(st);
                queued.done = true;
                return rx.try_recv().unwrap_or(Err(AcquireError::Closed));
            }
            let now = Instant::now();
            let give_up = if now >= deadline {
                Some(AcquireError::Timeout)
            } else if self.at_max(&st) {
                let since = *at_max_since.get_or_insert(now);
                (now >= since + queue_limit).then_some(AcquireError::Overloaded)
            } else {
                at_max_since = None;
                self.start_blocked(&st)
            };
            if let Some(e) = give_up {
                drop(st);
                return Err(e);
            }
        }
    }

    /// Hands free slots to the queue, oldest request first.
    fn dispatch(self: &Arc<Self>, st: &mut PoolState) {
        while !st.queue.is_empty() {
            if st.queue.front().is_some_and(|w| w.tx.is_closed()) {
                st.queue.pop_front();
                continue;
            }
            let Some(lease) = self.try_lease(st) else {
                break;
            };
            let w = st.queue.pop_front().expect("not empty");
            if let Err(Ok(mut lease)) = w.tx.send(Ok(lease)) {
                // The request went away in the meantime: the slot stays free for the next.
                lease.quiet = true;
            }
        }
        self.waiting.store(st.queue.len() as u64, Ordering::SeqCst);
    }

    /// Answers every queued request with `e`.
    fn fail_queue(&self, st: &mut PoolState, e: &AcquireError) {
        for w in st.queue.drain(..) {
            let _ = w.tx.send(Err(e.clone()));
        }
        self.waiting.store(0, Ordering::SeqCst);
    }

    /// A lease on the least-loaded ready instance with a free slot, if there is one.
    fn try_lease(self: &Arc<Self>, st: &PoolState) -> Option<Lease> {
        let inst = self.pick(st)?;
        let before = inst.in_flight.fetch_add(1, Ordering::SeqCst);
        if before == 0 {
            inst.busy_changed();
        }
        self.granted.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            pool: self.clone(),
            inst,
            quiet: false,
        })
    }

    /// The least-loaded ready instance with a free slot.
    fn pick(&self, st: &PoolState) -> Option<Arc<Inst>> {
        st.instances
            .iter()
            .filter(|i| i.state() == InstState::Ready && i.in_flight() < self.settings.concurrency)
            .min_by_key(|i| i.in_flight())
            .cloned()
    }

    /// Starts as many instances as demand (in-flight plus waiting requests) calls for.
    fn scale_up(self: &Arc<Self>, st: &mut PoolState) {
        if st.closed || st.backoff_until.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let live = st.count(InstState::Ready) + st.count(InstState::Starting);
        let requests: u64 = st.instances.iter().map(|i| i.in_flight()).sum::<u64>()
            + self.waiting.load(Ordering::SeqCst);
        let n = instances_to_start(
            Demand {
                requests,
                instances: live,
            },
            self.bounds(),
        );
        for _ in 0..n {
            self.start_instance(st);
        }
    }

    fn start_instance(self: &Arc<Self>, st: &mut PoolState) {
        let prepared = st.prepared.take();
        if prepared.is_some() {
            self.ctx.release_prepared_place();
        }
        let id = match &prepared {
            Some(p) => p.id.clone(),
            None => format!("{}-{}", self.key.revision, random_suffix()),
        };
        let meter = self.ctx.meters.start(
            skiff_metering::InstanceInfo {
                id: id.clone(),
                namespace: self.key.namespace.clone(),
                kind: skiff_metering::Kind::Service,
                owner: self.key.service.clone(),
                revision: self.key.revision.clone(),
                task: None,
                mode: if self.settings.cpu_throttling {
                    Billing::Request
                } else {
                    Billing::Instance
                },
                cpu_millis: self.settings.instance_cpu_millis(),
                memory_bytes: self.settings.instance_memory_bytes(),
            },
            now_ms(),
        );
        let inst = Arc::new(Inst {
            upstream: Default::default(),
            id,
            created: Instant::now(),
            meter,
            quota: OnceLock::new(),
            throttled: AtomicBool::new(false),
            started_at: Utc::now(),
            state: Mutex::new(InstState::Starting),
            in_flight: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            rt: OnceLock::new(),
            last_lines: Mutex::new(VecDeque::new()),
        });
        st.instances.push(inst.clone());
        let pool = self.clone();
        self.ctx
            .runtime
            .spawn(async move { pool.run_instance(inst, prepared).await });
    }

    /// Whether this revision's instances can be made ahead of demand: one container, no
    /// secrets (they resolve at each start, so `latest` moves on), and instances made ahead
    /// are allowed at all.
    fn preparable(&self) -> bool {
        self.ctx.prepared_max > 0
            && self.settings.sidecars.is_empty()
            && !self.settings.has_secrets()
            && !skiff_runtime::process_args(
                &self.image.entrypoint,
                &self.image.cmd,
                &self.settings.command,
                &self.settings.args,
            )
            .is_empty()
    }

    /// Keeps one instance made ahead of demand while the revision serves traffic (and a place
    /// is free); returns the one to discard when it no longer should have one.
    fn keep_prepared(self: &Arc<Self>, st: &mut PoolState) -> Option<Prepared> {
        if st.closed || !self.serving.load(Ordering::SeqCst) || !self.preparable() {
            return self.take_prepared(st);
        }
        if st.prepared.is_none()
            && !st.preparing
            && st.prepare_after.is_none_or(|t| t <= Instant::now())
            && self.ctx.take_prepared_place()
        {
            st.preparing = true;
            let pool = self.clone();
            self.ctx.runtime.spawn(async move { pool.prepare().await });
        }
        None
    }

    /// Takes the instance made ahead of demand out of the pool (to discard it).
    fn take_prepared(&self, st: &mut PoolState) -> Option<Prepared> {
        let gone = st.prepared.take();
        if gone.is_some() {
            self.ctx.release_prepared_place();
        }
        gone
    }

    /// Makes an instance ahead of demand: everything but the app's start.
    async fn prepare(self: Arc<Self>) {
        let id = format!("{}-{}", self.key.revision, random_suffix());
        let mut cfg = self.instance_config(&id);
        cfg.start_now = false;
        let made = self.sandbox(&id, &mut cfg).await;
        let unwanted = {
            let mut st = self.lock();
            st.preparing = false;
            match made {
                Ok((lease, rt, out, _)) => {
                    let p = Prepared {
                        id,
                        cfg,
                        lease,
                        rt,
                        out,
                    };
                    if st.closed || !self.serving.load(Ordering::SeqCst) {
                        Some(p)
                    } else {
                        tracing::info!(instance = p.id, "instance made ahead of demand");
                        st.prepared = Some(p);
                        None
                    }
                }
                Err(e) => {
                    st.prepare_after = Some(Instant::now() + PREPARE_RETRY);
                    self.ctx.release_prepared_place();
                    tracing::debug!(
                        revision = self.key.revision,
                        "making an instance ahead: {e}"
                    );
                    None
                }
            }
        };
        if let Some(p) = unwanted {
            self.ctx.release_prepared_place();
            p.discard().await;
        }
    }

    /// The instance's network (held until the instance ends: dropping the lease removes its
    /// interface), its shim, which has created the container (and started it, unless
    /// `cfg.start_now` is false), and how long taking the network took.
    async fn sandbox(
        &self,
        id: &str,
        cfg: &mut InstanceConfig,
    ) -> Result<
        (
            Option<skiff_network::Lease>,
            supervisor::Instance,
            supervisor::Output,
            Duration,
        ),
        String,
    > {
        let began = Instant::now();
        let lease = match self.ctx.network.as_ref().filter(|_| self.settings.egress) {
            None => None,
            Some(net) => {
                let owner = skiff_network::Owner::new(
                    &self.key.namespace,
                    id,
                    self.settings.service_account.as_deref(),
                );
                Some(
                    net.acquire(owner)
                        .await
                        .map_err(|e| format!("no network for the instance: {e}"))?,
                )
            }
        };
        (cfg.hosts, cfg.resolv_conf) = skiff_network::etc_files(lease.as_ref(), &cfg.hostname);
        cfg.joins_netns = lease.is_some();
        let network = began.elapsed();
        let netns = lease.as_ref().map(|l| l.netns());
        let (rt, out) = supervisor::spawn(&self.ctx.shim_exe, cfg, netns)
            .await
            .map_err(|e| e.to_string())?;
        Ok((lease, rt, out, network))
    }

    /// Adds the revision's sidecars to an instance's config: each container gets a name, a
    /// cgroup `ID/NAME` below the instance's, its place in the start order, and the in-memory
    /// volumes it mounts as binds of the instance's shared ones.
    fn add_sidecars(&self, cfg: &mut InstanceConfig) {
        let s = &self.settings;
        if s.sidecars.is_empty() {
            return;
        }
        let deps = &s.container_dependencies;
        let starts_now = |name: &str| deps.get(name).is_none_or(|d| d.is_empty());
        let binds = |vs: &[skiff_model::MemoryVolume]| -> Vec<(String, String, bool)> {
            vs.iter()
                .map(|v| (v.name.clone(), v.mount_path.clone(), v.read_only))
                .collect()
        };
        let id = cfg.id.clone();
        let name = s.container_name.clone().unwrap_or_default();
        let mut shared: Vec<(String, u64)> = Vec::new();
        for v in s
            .memory_volumes
            .iter()
            .chain(s.sidecars.iter().flat_map(|c| &c.memory_volumes))
        {
            match shared.iter_mut().find(|(n, _)| *n == v.name) {
                Some((_, size)) => *size = (*size).max(v.size_bytes),
                None => shared.push((v.name.clone(), v.size_bytes)),
            }
        }
        cfg.start_now = starts_now(&name);
        cfg.cgroup = Some(format!("{id}/{name}"));
        cfg.name = name;
        cfg.memory_volumes.clear();
        cfg.volume_binds = binds(&s.memory_volumes);
        cfg.shared_volumes = shared;
        let platform = [
            ("K_SERVICE", self.key.service.clone()),
            ("K_REVISION", self.key.revision.clone()),
            ("K_CONFIGURATION", self.key.service.clone()),
        ];
        for (sc, img) in s.sidecars.iter().zip(&self.sidecar_images) {
            cfg.sidecars.push(InstanceConfig {
                id: format!("{id}-{}", sc.name),
                dir: cfg.dir.join("containers").join(&sc.name),
                state_root: cfg.state_root.clone(),
                layers: img.layers.clone(),
                args: skiff_runtime::process_args(&img.entrypoint, &img.cmd, &sc.command, &sc.args),
                env: skiff_runtime::merge_env(&img.env, &sc.env, &platform),
                cwd: sc
                    .working_dir
                    .clone()
                    .or_else(|| img.working_dir.clone())
                    .unwrap_or_else(|| "/".into()),
                user: img.user.clone(),
                hostname: cfg.hostname.clone(),
                cpu_millis: sc.cpu_millis,
                memory_bytes: sc.memory_bytes,
                pids_limit: PIDS_LIMIT,
                joins_netns: false,
                hosts: String::new(),
                resolv_conf: String::new(),
                memory_volumes: Vec::new(),
                host_volumes: skiff_runtime::volume_mounts(&[], &sc.host_volumes).1,
                secrets_on_fd: false,
                secrets: Default::default(),
                name: sc.name.clone(),
                sidecars: Vec::new(),
                start_now: starts_now(&sc.name),
                cgroup: Some(format!("{id}/{}", sc.name)),
                shared_volumes: Vec::new(),
                volume_binds: binds(&sc.memory_volumes),
            });
        }
    }

    fn instance_config(&self, id: &str) -> InstanceConfig {
        let s = &self.settings;
        let img = &self.image;
        let args = skiff_runtime::process_args(&img.entrypoint, &img.cmd, &s.command, &s.args);
        let platform = [
            ("PORT", s.port.to_string()),
            ("K_SERVICE", self.key.service.clone()),
            ("K_REVISION", self.key.revision.clone()),
            ("K_CONFIGURATION", self.key.service.clone()),
        ];
        let env = skiff_runtime::merge_env(&img.env, &s.env, &platform);
        let (memory_volumes, host_volumes) =
            skiff_runtime::volume_mounts(&s.memory_volumes, &s.host_volumes);
        let mut cfg = InstanceConfig {
            id: id.to_string(),
            dir: self.ctx.instances_dir.join(id),
            state_root: self.ctx.state_root.clone(),
            layers: img.layers.clone(),
            args,
            env,
            cwd: s
                .working_dir
                .clone()
                .or_else(|| img.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            user: img.user.clone(),
            hostname: "localhost".into(),
            cpu_millis: s.cpu_millis,
            memory_bytes: s.memory_bytes,
            pids_limit: PIDS_LIMIT,
            joins_netns: false,
            hosts: String::new(),
            resolv_conf: String::new(),
            memory_volumes,
            host_volumes,
            secrets_on_fd: false,
            secrets: Default::default(),
            name: String::new(),
            sidecars: Vec::new(),
            start_now: true,
            cgroup: None,
            shared_volumes: Vec::new(),
            volume_binds: Vec::new(),
        };
        self.add_sidecars(&mut cfg);
        cfg
    }

    /// A new instance's config, with its secrets resolved; `None` when it cannot start (the
    /// failure is recorded).
    async fn start_config(&self, inst: &Arc<Inst>) -> Option<InstanceConfig> {
        let mut cfg = self.instance_config(&inst.id);
        if let Some(c) = cfg.sidecars.iter().find(|c| c.args.is_empty()) {
            let why = format!(
                "the image of container {} has no entrypoint or command: give it a command",
                c.name
            );
            self.start_failed(inst, why).await;
            return None;
        }
        if cfg.args.is_empty() {
            self.start_failed(
                inst,
                "the image has no entrypoint or command: pass --command".into(),
            )
            .await;
            return None;
        }
        // Secret references resolve now, at each instance start (`latest` moves on).
        if self.settings.has_secrets() {
            let secrets = self.ctx.secrets.clone();
            let (ns, s) = (self.key.namespace.clone(), self.settings.clone());
            let resolved = tokio::task::spawn_blocking(move || {
                let mut m = secrets
                    .material(&ns, &s.secret_env, &s.secret_volumes)
                    .map_err(|e| e.to_string())?;
                for c in s.sidecars.iter().filter(|c| c.has_secrets()) {
                    let own = secrets
                        .material(&ns, &c.secret_env, &c.secret_volumes)
                        .map_err(|e| format!("container {}: {e}", c.name))?;
                    m.sidecars.push((c.name.clone(), own));
                }
                Ok::<_, String>(m)
            })
            .await;
            match resolved {
                Ok(Ok(m)) => cfg.secrets = m,
                Ok(Err(e)) => {
                    self.start_failed(inst, format!("cannot resolve a secret: {e}"))
                        .await;
                    return None;
                }
                Err(e) => {
                    self.start_failed(inst, format!("cannot resolve secrets: {e}"))
                        .await;
                    return None;
                }
            }
        }
        Some(cfg)
    }

    async fn run_instance(self: Arc<Self>, inst: Arc<Inst>, prepared: Option<Prepared>) {
        let ahead = if prepared.is_some() {
            " (made ahead of demand)"
        } else {
            ""
        };
        let (cfg, lease, rt, out, network) = match prepared {
            Some(p) => {
                p.rt.start().await;
                (p.cfg, p.lease, p.rt, p.out, None)
            }
            None => {
                let Some(mut cfg) = self.start_config(&inst).await else {
                    return;
                };
                match self.sandbox(&inst.id, &mut cfg).await {
                    Ok((lease, rt, out, net)) => (cfg, lease, rt, out, Some(net)),
                    Err(e) => {
                        self.start_failed(&inst, e).await;
                        return;
                    }
                }
            }
        };
        if let Some(l) = &lease {
            inst.meter.set_net_reader(l.net_reader());
        }
        let netns = rt
            .netns
            .as_ref()
            .and_then(|f| f.try_clone().ok())
            .map(Arc::new);
        let rt = inst.rt.get_or_init(|| rt);
        if self.settings.cpu_throttling {
            match CpuQuota::open(&inst.id, self.settings.instance_cpu_millis()) {
                Ok(q) => {
                    let _ = inst.quota.set(q);
                }
                Err(e) => tracing::debug!(instance = inst.id, "cpu quota: {e}"),
            }
        }
        let main_name = cfg.name.clone();
        let mut readers = vec![
            self.read_output(&inst, out.stdout, "stdout", &main_name),
            self.read_output(&inst, out.stderr, "stderr", &main_name),
        ];
        for (name, stdout, stderr) in out.sidecars {
            readers.push(self.read_output(&inst, stdout, "stdout", &name));
            readers.push(self.read_output(&inst, stderr, "stderr", &name));
        }
        let Some(netns) = netns else {
            let exit = rt.wait().await;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), futures::future::join_all(readers))
                    .await;
            let why = format!(
                "{}the container {exit} before listening on port {}",
                self.oom(rt),
                self.settings.port
            );
            self.start_failed(&inst, format!("{why}{}", inst.last_output()))
                .await;
            return;
        };
        self.ctx
            .netns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(inst.id.clone(), netns.clone());

        let began = Instant::now();
        let mut interval = Duration::from_micros(500);
        // With sidecars, the containers start in their dependencies' order first.
        let ordered = if self.settings.sidecars.is_empty() {
            Ok(())
        } else {
            self.start_in_order(&inst, rt, &netns, &main_name).await
        };
        let ready = if let Err(why) = ordered {
            Err(why)
        } else if let Some(p) = &self.settings.startup_probe {
            self.startup_probe(&inst, rt, &netns, p).await
        } else {
            // Cloud Run's default startup probe: the port accepts a TCP connection.
            loop {
                if inst.state() == InstState::Draining {
                    break Err("stopped while starting".to_string());
                }
                if let Some(exit) = rt.exit() {
                    break Err(format!(
                        "{}the container {exit} before listening on port {}",
                        self.oom(rt),
                        self.settings.port
                    ));
                }
                if skiff_runtime::netns::connect(netns.clone(), self.settings.port)
                    .await
                    .is_ok()
                {
                    break Ok(());
                }
                if began.elapsed() > STARTUP_TIMEOUT {
                    break Err(format!(
                    "the container did not listen on port {} within {}s: make the app listen on 0.0.0.0:$PORT",
                    self.settings.port,
                    STARTUP_TIMEOUT.as_secs()
                ));
                }
                tokio::time::sleep(interval).await;
                // Probe tightly while a fast app is likely to come up, then back off.
                let cap = if began.elapsed() < Duration::from_secs(2) {
                    2
                } else {
                    50
                };
                interval = (interval * 2).min(Duration::from_millis(cap));
            }
        };
        match ready {
            Ok(()) => {
                {
                    let mut st = self.lock();
                    if inst.state() == InstState::Starting {
                        inst.set_state(InstState::Ready);
                    }
                    st.consecutive_failures = 0;
                    st.backoff_until = None;
                    self.dispatch(&mut st);
                }
                inst.meter_event(|m, t| {
                    m.ready(t);
                });
                self.metrics.started(inst.created.elapsed());
                tracing::info!(
                    instance = inst.id,
                    "ready in {}{ahead}: {}",
                    ms(inst.created.elapsed()),
                    start_steps(network, &rt.phases(), began.elapsed())
                );
                let probes = std::iter::once((None, self.settings.liveness_probe.clone())).chain(
                    self.settings
                        .sidecars
                        .iter()
                        .map(|c| (Some(c.name.clone()), c.liveness_probe.clone())),
                );
                for (container, p) in probes {
                    let Some(p) = p else { continue };
                    let (pool, inst, netns) = (self.clone(), inst.clone(), netns.clone());
                    self.ctx.runtime.spawn(async move {
                        pool.liveness_probe(&inst, &netns, &p, container.as_deref())
                            .await
                    });
                }
                // With sidecars, one container's end stops the instance: it takes no new
                // requests while the others have their grace period.
                rt.wait_stopping().await;
                let crashed = {
                    let _st = self.lock();
                    let crashed = inst.state() != InstState::Draining;
                    inst.set_state(InstState::Draining);
                    crashed
                };
                if crashed && rt.exit().is_none() {
                    self.reconcile();
                }
                let exit = rt.wait().await;
                inst.ended();
                self.remove(&inst);
                if crashed {
                    let why = match (self.oom(rt).as_str(), rt.ended_by()) {
                        ("", None) => exit.to_string(),
                        (oom, None) => format!("{oom}the container {exit}"),
                        (oom, Some(c)) => format!("{oom}container {c} {exit}: replacing it"),
                    };
                    self.log(&inst, format!("instance {} {why}", inst.id));
                    tracing::warn!(instance = inst.id, "instance {why}");
                    self.reconcile();
                }
            }
            Err(why) => {
                rt.stop(Duration::ZERO).await;
                // Let the output readers reach the end, so the message holds the last lines.
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    futures::future::join_all(readers),
                )
                .await;
                let detail = format!("{why}{}", inst.last_output());
                self.start_failed(&inst, detail).await;
            }
        }
    }

    /// Starts an instance's containers in the order of the revision's
    /// `run.googleapis.com/container-dependencies`: a container starts once every container it
    /// depends on has started and passed its startup probe, if it has one (the shim started
    /// those without dependencies already). Returns once the ingress container has started.
    async fn start_in_order(
        &self,
        inst: &Inst,
        rt: &supervisor::Instance,
        netns: &Arc<std::fs::File>,
        ingress: &str,
    ) -> Result<(), String> {
        let s = &self.settings;
        let deps = &s.container_dependencies;
        let mut healthy: Vec<String> = Vec::new();
        let mut pending: Vec<String> = std::iter::once(ingress.to_string())
            .chain(s.sidecars.iter().map(|c| c.name.clone()))
            .filter(|n| deps.get(n).is_some_and(|d| !d.is_empty()))
            .collect();
        let mut order: Vec<String> = s.sidecars.iter().map(|c| c.name.clone()).collect();
        order.push(ingress.to_string());
        loop {
            // Every container that something waits for: started, then its probe passed.
            let needed: Vec<String> = order
                .iter()
                .filter(|n| !healthy.contains(n))
                .filter(|n| pending.iter().any(|p| deps[p].contains(n)))
                .cloned()
                .collect();
            for n in &needed {
                if !pending.contains(n) {
                    if !rt.wait_started(n).await {
                        return Err(self.ended_while_starting(rt));
                    }
                    if let Some(p) = s
                        .sidecars
                        .iter()
                        .find(|c| &c.name == n)
                        .and_then(|c| c.startup_probe.as_ref())
                    {
                        self.startup_probe(inst, rt, netns, p)
                            .await
                            .map_err(|e| format!("container {n}: {e}"))?;
                    }
                    healthy.push(n.clone());
                }
            }
            let ready: Vec<String> = pending
                .iter()
                .filter(|p| deps[*p].iter().all(|d| healthy.contains(d)))
                .cloned()
                .collect();
            if ready.is_empty() && !pending.is_empty() {
                return Err("the containers' start order could not be followed".into());
            }
            for n in &ready {
                rt.start_container(n).await;
                pending.retain(|p| p != n);
            }
            if pending.is_empty() {
                break;
            }
        }
        if rt.wait_started(ingress).await {
            Ok(())
        } else {
            Err(self.ended_while_starting(rt))
        }
    }

    /// Why an instance with sidecars ended before its ingress container was ready.
    fn ended_while_starting(&self, rt: &supervisor::Instance) -> String {
        match (rt.exit(), rt.ended_by()) {
            (Some(exit), Some(c)) => {
                format!(
                    "{}container {c} {exit} while the instance started",
                    self.oom(rt)
                )
            }
            (Some(exit), None) => format!("{}the container {exit} while starting", self.oom(rt)),
            (None, _) => "stopped while starting".into(),
        }
    }

    /// `Memory limit of 128 MiB exceeded with 131 MiB used: ` if the memory cgroup killed in
    /// the instance (its final reading says so), else nothing.
    fn oom(&self, rt: &supervisor::Instance) -> String {
        skiff_runtime::cgroup::oom_message(rt.final_usage().as_ref(), self.settings.memory_bytes)
            .map(|m| format!("{m}: "))
            .unwrap_or_default()
    }

    /// Sleeps `d`, or less if the instance stops meanwhile; false if it did.
    async fn sleep_while_running(&self, inst: &Inst, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let gone = inst.state() == InstState::Draining
                || inst.rt.get().is_none_or(|r| r.exit().is_some());
            if gone {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    /// A startup probe the revision gives: first after `initialDelaySeconds`, then every
    /// `periodSeconds`; `failureThreshold` failures in a row fail the start, with the last
    /// attempt's result in the reason.
    async fn startup_probe(
        &self,
        inst: &Inst,
        rt: &supervisor::Instance,
        netns: &Arc<std::fs::File>,
        p: &skiff_model::ProbeSettings,
    ) -> Result<(), String> {
        let stopped = |rt: &supervisor::Instance| match rt.exit() {
            Some(exit) => format!(
                "{}the container {exit} before its startup probe ({}) succeeded",
                self.oom(rt),
                p.describe()
            ),
            None => "stopped while starting".to_string(),
        };
        if !self.sleep_while_running(inst, p.initial_delay).await {
            return Err(stopped(rt));
        }
        let mut failures = 0;
        loop {
            let began = Instant::now();
            match crate::probe::attempt(netns.clone(), p).await {
                Ok(()) => return Ok(()),
                Err(why) => {
                    failures += 1;
                    if failures >= p.failure_threshold {
                        return Err(format!(
                            "the startup probe ({}) failed {failures} time{} in a row, last: {why}",
                            p.describe(),
                            if failures == 1 { "" } else { "s" }
                        ));
                    }
                }
            }
            if !self
                .sleep_while_running(inst, p.period.saturating_sub(began.elapsed()))
                .await
            {
                return Err(stopped(rt));
            }
        }
    }

    /// The liveness probe of a started instance: first after `initialDelaySeconds`, then every
    /// `periodSeconds`; `failureThreshold` failures in a row restart the instance (it is
    /// stopped, SIGTERM then SIGKILL, and the pool starts another as needed).
    async fn liveness_probe(
        &self,
        inst: &Arc<Inst>,
        netns: &Arc<std::fs::File>,
        p: &skiff_model::ProbeSettings,
        container: Option<&str>,
    ) {
        if !self.sleep_while_running(inst, p.initial_delay).await {
            return;
        }
        let mut failures = 0;
        loop {
            let began = Instant::now();
            match crate::probe::attempt(netns.clone(), p).await {
                Ok(()) => failures = 0,
                Err(why) => {
                    failures += 1;
                    if failures >= p.failure_threshold {
                        if inst.state() == InstState::Draining {
                            return;
                        }
                        let whose = container
                            .map(|c| format!(" container {c}"))
                            .unwrap_or_default();
                        let msg = format!(
                            "instance {}{whose} failed its liveness probe ({}) {failures} time{} in a row, last: {why}; restarting it",
                            inst.id,
                            p.describe(),
                            if failures == 1 { "" } else { "s" }
                        );
                        tracing::warn!(instance = inst.id, "{msg}");
                        self.log(inst, msg);
                        if let Some(rt) = inst.rt.get() {
                            rt.stop(STOP_GRACE).await;
                        }
                        return;
                    }
                }
            }
            if !self
                .sleep_while_running(inst, p.period.saturating_sub(began.elapsed()))
                .await
            {
                return;
            }
        }
    }

    fn source(&self, inst: &Inst) -> LogSource {
        LogSource {
            namespace: self.key.namespace.clone(),
            service: self.key.service.clone(),
            revision: self.key.revision.clone(),
            instance: inst.id.clone(),
            ..Default::default()
        }
    }

    /// Writes one request's entry (stream `requests`) without waiting, from `instance`, or
    /// from none when the platform answered itself.
    pub(crate) fn log_request(
        &self,
        instance: Option<&str>,
        req: skiff_runtime::logs::HttpRequest,
    ) {
        let source = LogSource {
            namespace: self.key.namespace.clone(),
            service: self.key.service.clone(),
            revision: self.key.revision.clone(),
            instance: instance.unwrap_or_default().to_string(),
            ..Default::default()
        };
        self.ctx.logs.push_request(source, req);
    }

    fn log(&self, inst: &Inst, line: String) {
        self.ctx.logs.push(&self.source(inst), "system", line);
    }

    fn read_output<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
        self: &Arc<Self>,
        inst: &Arc<Inst>,
        r: R,
        stream: &'static str,
        container: &str,
    ) -> tokio::task::JoinHandle<()> {
        let keep = inst.clone();
        let mut source = self.source(inst);
        source.container = container.to_string();
        skiff_runtime::logs::capture(self.ctx.logs.clone(), source, stream, r, move |l| {
            keep.remember(l)
        })
    }

    async fn start_failed(&self, inst: &Arc<Inst>, why: String) {
        inst.ended();
        tracing::warn!(instance = inst.id, "start failed: {why}");
        self.log(inst, format!("instance {} failed to start: {why}", inst.id));
        self.remove(inst);
        {
            let mut st = self.lock();
            st.consecutive_failures += 1;
            st.last_error = Some(why);
            let backoff =
                Duration::from_millis(100) * 2u32.saturating_pow(st.consecutive_failures.min(9));
            st.backoff_until = Some(Instant::now() + backoff.min(Duration::from_secs(30)));
            // With nothing starting and nothing that will free a slot, no queued request can
            // be served: tell them why.
            if st.count(InstState::Starting) == 0 && st.count(InstState::Ready) == 0 {
                let e = AcquireError::StartFailed(st.last_error.clone().unwrap_or_default());
                self.fail_queue(&mut st, &e);
            }
        }
    }

    fn remove(&self, inst: &Arc<Inst>) {
        self.ctx
            .netns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&inst.id);
        self.lock().instances.retain(|i| !Arc::ptr_eq(i, inst));
    }

    /// The autoscaler's tick, once a second: feeds it the average load since the last tick,
    /// starts instances up to its desire, and stops idle instances above it (longest idle
    /// first; an instance with a request in flight is never stopped).
    pub fn reconcile(self: &Arc<Self>) {
        // A lease handed out since the last sample (a deploy's warm-up, say) is activity too.
        self.sample();
        let mut to_stop = Vec::new();
        let discard;
        {
            let mut st = self.lock();
            let (sum, n) =
                std::mem::take(&mut *self.load.lock().unwrap_or_else(|e| e.into_inner()));
            let avg = sum / f64::from(n.max(1));
            let ready = st.count(InstState::Ready);
            let starting = st.count(InstState::Starting);
            let desired = {
                let mut kpa = self.kpa.lock().unwrap_or_else(|e| e.into_inner());
                let now = self.epoch.elapsed();
                kpa.record(now, avg);
                kpa.desired(now, ready).desired
            };
            let live = ready + starting;
            if live > desired {
                let mut idle: Vec<Arc<Inst>> = st
                    .instances
                    .iter()
                    .filter(|i| i.state() == InstState::Ready && i.in_flight() == 0)
                    .cloned()
                    .collect();
                idle.sort_by_key(|i| std::cmp::Reverse(i.idle_for()));
                for inst in idle.into_iter().take((live - desired) as usize) {
                    inst.set_state(InstState::Draining);
                    inst.meter_event(|m, t| {
                        m.stopping(t);
                    });
                    to_stop.push(inst);
                }
            } else if desired > live
                && !st.closed
                && st.backoff_until.is_none_or(|t| t <= Instant::now())
            {
                for _ in live..desired {
                    self.start_instance(&mut st);
                }
            }
            // Requests waiting right now are served without waiting for the averages.
            self.scale_up(&mut st);
            self.dispatch(&mut st);
            discard = self.keep_prepared(&mut st);
        }
        if let Some(p) = discard {
            self.ctx.runtime.spawn(p.discard());
        }
        for inst in to_stop {
            self.log(&inst, format!("instance {} stopping: scaled down", inst.id));
            self.ctx.runtime.spawn(async move {
                if let Some(rt) = inst.rt.get() {
                    rt.stop(STOP_GRACE).await;
                }
            });
        }
    }

    /// Stops every instance (SIGTERM, SIGKILL after the grace) and refuses new starts.
    pub async fn close(&self) {
        let insts = {
            let mut st = self.lock();
            st.closed = true;
            for i in &st.instances {
                i.set_state(InstState::Draining);
                i.meter_event(|m, t| {
                    m.stopping(t);
                });
            }
            self.fail_queue(&mut st, &AcquireError::Closed);
            (st.instances.clone(), self.take_prepared(&mut st))
        };
        let (insts, prepared) = insts;
        if let Some(p) = prepared {
            p.discard().await;
        }
        let stops = insts.iter().map(|i| async move {
            // A starting instance notices Draining and stops itself; wait for its runtime.
            for _ in 0..200 {
                if i.rt.get().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if let Some(rt) = i.rt.get() {
                rt.stop(STOP_GRACE).await;
            }
            // Its own task records this too; whichever comes first, the server's last usage
            // checkpoint sees the instance ended.
            i.ended();
        });
        futures::future::join_all(stops).await;
    }
}

/// `d` in milliseconds, to a tenth.
fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// An instance start's steps for the log: `network` (taking a network sandbox; `None` when
/// the instance was made ahead of demand), the runtime's `phases` after it (only `start` for
/// an instance made ahead: the rest was done before the request), and `probed`, the time from
/// the container's creation (or the `start` sent) to the port's first accept.
fn start_steps(
    network: Option<Duration>,
    phases: &[(String, Duration)],
    probed: Duration,
) -> String {
    let mut steps: Vec<String> = Vec::new();
    if let Some(n) = network {
        steps.push(format!("network {}", ms(n)));
    }
    let shown = phases
        .iter()
        .filter(|(name, _)| network.is_some() || name == "start");
    steps.extend(shown.map(|(name, d)| format!("{name} {}", ms(*d))));
    steps.push(format!("until first accept {}", ms(probed)));
    steps.join(", ")
}

fn random_suffix() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// The autoscaler settings of a revision: its annotations over the server's defaults (the
/// scale-to-zero grace is `--scale-to-zero-after`); min-instances holds only while the
/// revision receives traffic. The annotations were validated when the revision was created.
fn kpa_settings(s: &RevisionSettings, ctx: &Ctx, serving: bool) -> KpaSettings {
    let d = Defaults {
        scale_to_zero_grace: ctx.scale_to_zero_after,
        max_scale: s.max_instances,
        ..Defaults::default()
    };
    let mut k = KpaSettings::from_annotations(s.concurrency, &s.autoscaling, &d)
        .unwrap_or_else(|_| KpaSettings::from_defaults(s.concurrency, &d));
    k.min = if serving { s.min_instances } else { 0 };
    k.max = s.max_instances;
    k
}
