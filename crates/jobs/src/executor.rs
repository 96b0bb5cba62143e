//! Executions and their tasks: creating them, driving them to completion, cancelling them,
//! and resuming them after a restart.

use crate::JobError;
use skiff_image::{ImageStore, ResolvedImage};
use skiff_model::*;
use skiff_runtime::logs::{LogSink, LogSource};
use skiff_runtime::supervisor::{self, Exit};
use skiff_runtime::InstanceConfig;
use skiff_store::{kind, ObjectRow, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// How long a stopped task gets between SIGTERM and SIGKILL (Cloud Run's, as for instances).
const STOP_GRACE: Duration = skiff_runtime::STOP_GRACE;
/// Executions kept per job; older ones are deleted when a new one starts.
const KEEP_EXECUTIONS: usize = 1000;

pub struct JobsConfig {
    pub shim_exe: PathBuf,
    pub instances_dir: PathBuf,
    pub state_root: PathBuf,
    pub logs: Arc<LogSink>,
    /// Every task attempt is metered here (instance-based).
    pub meters: Arc<skiff_metering::Registry>,
    /// Instance networking; `None`: tasks get loopback only.
    pub network: Option<Arc<skiff_network::Network>>,
    /// Where secret references resolve at each task attempt's start.
    pub secrets: Arc<skiff_secrets::SecretStore>,
}

/// Per-execution changes `jobs execute` may make (Cloud Run's `overrides`).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub task_count: Option<u64>,
    pub timeout_seconds: Option<u64>,
}

pub struct Jobs {
    cfg: JobsConfig,
    store: Arc<Store>,
    images: Arc<ImageStore>,
    /// Running executions: `(namespace, execution)` → cancel signal.
    running: Mutex<HashMap<(String, String), watch::Sender<bool>>>,
    /// Set when the server stops: tasks are stopped but stay "running" in the store, to be
    /// resumed on the next start.
    shutdown: watch::Sender<bool>,
    /// Called once an execution has completed and been saved; see [`Jobs::on_finished`].
    finished: std::sync::OnceLock<FinishedHook>,
}

/// Told of each completed execution: `(namespace, job, execution)`.
pub type FinishedHook = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// `NAME@sha256:...` → `sha256:...`; a plain reference stays as it is.
fn pinned_digest(image: &str) -> &str {
    image.rsplit_once('@').map_or(image, |(_, d)| d)
}

/// An execution's spec with the overrides applied.
fn apply_overrides(mut spec: ExecutionSpec, o: &Overrides) -> ExecutionSpec {
    if let Some(n) = o.task_count {
        spec.task_count = Some(n);
    }
    let task = &mut spec.template.spec;
    if let Some(t) = o.timeout_seconds {
        task.timeout_seconds = Some(t);
    }
    if let Some(c) = task.containers.first_mut() {
        if let Some(args) = &o.args {
            c.args = args.clone();
        }
        for (k, v) in &o.env {
            c.env.retain(|e| &e.name != k);
            c.env.push(EnvVar {
                name: k.clone(),
                value: v.clone(),
                value_from: None,
            });
        }
    }
    spec
}

fn condition(
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> Condition {
    Condition::new(type_, status, reason, message)
}

/// Shared, persisted state of one running execution.
struct Run {
    ns: String,
    execution: Mutex<Execution>,
    tasks: Vec<Mutex<Task>>,
    /// The execution's task counts, kept up to date at each task's change so that saving the
    /// execution costs the same at 10 000 tasks as at 1 (Cloud Run's limit is 10 000 tasks).
    tally: Mutex<Tally>,
    settings: TaskSettings,
    image: ResolvedImage,
}

/// How many of an execution's tasks are in each [`TaskState`], and how many retries they had.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Indexed by `TaskState as usize`.
    states: [u64; 5],
    retried: u64,
}

impl Tally {
    fn of(tasks: &[Task]) -> Tally {
        let mut t = Tally::default();
        for task in tasks {
            t.states[task.status.state as usize] += 1;
            t.retried += task.status.retried;
        }
        t
    }

    fn count(&self, s: TaskState) -> u64 {
        self.states[s as usize]
    }
}

impl Run {
    fn new(
        ns: String,
        execution: Execution,
        tasks: Vec<Task>,
        settings: TaskSettings,
        image: ResolvedImage,
    ) -> Run {
        Run {
            ns,
            execution: Mutex::new(execution),
            tally: Mutex::new(Tally::of(&tasks)),
            tasks: tasks.into_iter().map(Mutex::new).collect(),
            settings,
            image,
        }
    }

    /// Moves task `t` (locked by the caller) to `state`, keeping the tally in step.
    fn set_state(&self, t: &mut Task, state: TaskState) {
        let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        tally.states[t.status.state as usize] -= 1;
        tally.states[state as usize] += 1;
        t.status.state = state;
    }

    /// Counts one more retry of task `t` (locked by the caller).
    fn add_retry(&self, t: &mut Task) {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).retried += 1;
        t.status.retried += 1;
    }
}

impl Jobs {
    pub fn new(cfg: JobsConfig, store: Arc<Store>, images: Arc<ImageStore>) -> Arc<Jobs> {
        Arc::new(Jobs {
            cfg,
            store,
            images,
            running: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            finished: std::sync::OnceLock::new(),
        })
    }

    /// Sets the hook told of each execution that completes (succeeded, failed or cancelled),
    /// after it is saved; the server passes one that writes the control-plane event. Only the
    /// first call takes effect.
    pub fn on_finished(&self, hook: FinishedHook) {
        let _ = self.finished.set(hook);
    }

    pub fn logs(&self) -> &Arc<LogSink> {
        &self.cfg.logs
    }

    /// Checks a job's template and that its image exists; returns the settings.
    pub fn validate(&self, job: &Job) -> Result<TaskSettings, JobError> {
        validate_name("job", &job.metadata.name, 63)?;
        let settings = TaskSettings::from_spec(&job.spec.template.spec)?;
        self.images.resolve(&settings.image).map_err(|e| match e {
            skiff_image::ImageError::NotFound { .. } => JobError::Invalid(format!(
                "image {} is not in the image store: import it with `skiff images import PATH --name {}`",
                settings.image, settings.image
            )),
            e => e.into(),
        })?;
        Ok(settings)
    }

    /// Starts an execution of `job` now; returns it as stored.
    pub fn execute(
        self: &Arc<Self>,
        ns: &str,
        job: &Job,
        o: &Overrides,
    ) -> Result<Execution, JobError> {
        let spec = apply_overrides(job.spec.template.spec.clone(), o);
        let settings = TaskSettings::from_spec(&spec)?;
        let image = self.images.resolve(&settings.image)?;
        let job_name = job.metadata.name.clone();
        let name = format!("{job_name}-{}", random_suffix(5));
        let now = now_rfc3339();
        let mut labels = job.spec.template.metadata.labels.clone();
        labels.insert(LABEL_JOB.into(), job_name.clone());
        labels.insert(LABEL_LOCATION.into(), REGION.into());
        let execution = Execution {
            api_version: RUN_API_VERSION.into(),
            kind: "Execution".into(),
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: ns.to_string(),
                uid: random_suffix(16),
                generation: 1,
                creation_timestamp: Some(now.clone()),
                labels: labels.clone(),
                annotations: [("skiff.dev/image-digest".to_string(), image.digest.clone())].into(),
                ..Default::default()
            },
            spec: spec.clone(),
            status: Some(ExecutionStatus {
                observed_generation: 1,
                conditions: vec![
                    condition("Completed", "Unknown", None, None),
                    condition("ResourcesAvailable", "Unknown", None, None),
                    condition("Started", "Unknown", None, None),
                ],
                log_uri: Some(format!(
                    "skiff logs read --job {job_name} --execution {name}"
                )),
                ..Default::default()
            }),
        };
        let tasks: Vec<Task> = (0..settings.task_count)
            .map(|i| {
                let mut l = labels.clone();
                l.insert(LABEL_EXECUTION.into(), name.clone());
                l.insert(
                    LABEL_RUNNING_STATE.into(),
                    TaskState::Pending.as_str().into(),
                );
                Task {
                    api_version: RUN_API_VERSION.into(),
                    kind: "Task".into(),
                    metadata: ObjectMeta {
                        name: format!("{name}-task{i}"),
                        namespace: ns.to_string(),
                        labels: l,
                        creation_timestamp: Some(now.clone()),
                        ..Default::default()
                    },
                    spec: spec.template.spec.clone(),
                    status: TaskStatus {
                        index: i,
                        conditions: vec![condition("Completed", "Unknown", Some("Pending"), None)],
                        ..Default::default()
                    },
                }
            })
            .collect();
        let exec_value = serde_json::to_value(&execution).expect("serializes");
        let mut rows = vec![ObjectRow {
            kind: kind::EXECUTION,
            namespace: ns,
            name: &name,
            parent: &job_name,
            body: &exec_value,
        }];
        let task_values: Vec<serde_json::Value> = tasks
            .iter()
            .map(|t| serde_json::to_value(t).expect("serializes"))
            .collect();
        for (t, v) in tasks.iter().zip(&task_values) {
            rows.push(ObjectRow {
                kind: kind::TASK,
                namespace: ns,
                name: &t.metadata.name,
                parent: &name,
                body: v,
            });
        }
        self.store.put_objects(&rows)?;
        let mut job = job.clone();
        let status = job.status.get_or_insert_with(Default::default);
        status.execution_count += 1;
        status.latest_created_execution = Some(ExecutionReference {
            name: name.clone(),
            creation_timestamp: Some(now),
            completion_timestamp: None,
        });
        self.store.put_object(kind::JOB, ns, &job_name, "", &job)?;
        self.prune(ns, &job_name)?;
        let run = Arc::new(Run::new(
            ns.to_string(),
            execution.clone(),
            tasks,
            settings,
            image,
        ));
        self.spawn_drive(run);
        Ok(execution)
    }

    /// Deletes the oldest finished executions beyond the last [`KEEP_EXECUTIONS`] of a job.
    fn prune(&self, ns: &str, job: &str) -> Result<(), JobError> {
        let all: Vec<Execution> = self
            .store
            .list_objects(kind::EXECUTION, Some(ns), Some(job))?;
        let excess = all.len().saturating_sub(KEEP_EXECUTIONS);
        for e in all.iter().take(excess) {
            if !self.is_running(ns, &e.metadata.name) {
                self.store
                    .delete_object(kind::EXECUTION, ns, &e.metadata.name, &[kind::TASK])?;
            }
        }
        Ok(())
    }

    pub fn is_running(&self, ns: &str, execution: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(ns.to_string(), execution.to_string()))
    }

    /// Cancels a running execution: its running tasks are stopped, pending ones never start.
    pub fn cancel(&self, ns: &str, execution: &str) -> Result<(), JobError> {
        let tx = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), execution.to_string()))
            .cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(true);
                Ok(())
            }
            None => Err(JobError::Conflict(format!(
                "execution {execution} is not running"
            ))),
        }
    }

    /// Stops every running task without recording an outcome: the executions resume when the
    /// server starts again.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for _ in 0..((STOP_GRACE.as_millis() / 50) + 40) {
            if self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Carries on every execution that had not completed when the server last stopped. Tasks
    /// that were running are run again as a new attempt.
    pub fn resume(self: &Arc<Self>) -> Result<usize, JobError> {
        let mut n = 0;
        for e in self
            .store
            .list_objects::<Execution>(kind::EXECUTION, None, None)?
        {
            let done = e
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Completed"))
                .is_some_and(|c| c.status != "Unknown");
            if done {
                continue;
            }
            let ns = e.metadata.namespace.clone();
            let settings = TaskSettings::from_spec(&e.spec)?;
            let digest = e
                .metadata
                .annotations
                .get("skiff.dev/image-digest")
                .cloned()
                .unwrap_or_default();
            let image = self.images.resolve(pinned_digest(&digest))?;
            let mut tasks: Vec<Task> =
                self.store
                    .list_objects(kind::TASK, Some(&ns), Some(&e.metadata.name))?;
            tasks.sort_by_key(|t| t.status.index);
            for t in &mut tasks {
                if t.status.state == TaskState::Running {
                    t.status.state = TaskState::Pending;
                }
            }
            tracing::info!(execution = e.metadata.name, "resuming execution");
            let run = Arc::new(Run::new(ns, e, tasks, settings, image));
            self.spawn_drive(run);
            n += 1;
        }
        Ok(n)
    }

    fn spawn_drive(self: &Arc<Self>, run: Arc<Run>) {
        let name = run
            .execution
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metadata
            .name
            .clone();
        let (tx, rx) = watch::channel(false);
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((run.ns.clone(), name.clone()), tx);
        let this = self.clone();
        tokio::spawn(async move {
            this.drive(run.clone(), rx).await;
            this.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(run.ns.clone(), name));
        });
    }

    /// Writes the execution (with its task counts from the tally) and, when given, one task,
    /// in one transaction. The execution stays locked until the write is done, so the last
    /// row written always has the newest counts.
    fn save(&self, run: &Run, task: Option<usize>) {
        let mut e = run.execution.lock().unwrap_or_else(|e| e.into_inner());
        let tally = *run.tally.lock().unwrap_or_else(|e| e.into_inner());
        let st = e.status.get_or_insert_with(Default::default);
        st.running_count = tally.count(TaskState::Running);
        st.succeeded_count = tally.count(TaskState::Succeeded);
        st.failed_count = tally.count(TaskState::Failed);
        st.cancelled_count = tally.count(TaskState::Cancelled);
        st.retried_count = tally.retried;
        let job = e
            .metadata
            .labels
            .get(LABEL_JOB)
            .cloned()
            .unwrap_or_default();
        let t = task.map(|i| {
            let mut t = run.tasks[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let state = t.status.state.as_str().to_string();
            t.metadata.labels.insert(LABEL_RUNNING_STATE.into(), state);
            t
        });
        let ev = serde_json::to_value(&*e).expect("serializes");
        let tv = t
            .as_ref()
            .map(|t| serde_json::to_value(t).expect("serializes"));
        let mut rows = vec![ObjectRow {
            kind: kind::EXECUTION,
            namespace: &run.ns,
            name: &e.metadata.name,
            parent: &job,
            body: &ev,
        }];
        if let (Some(t), Some(tv)) = (&t, &tv) {
            rows.push(ObjectRow {
                kind: kind::TASK,
                namespace: &run.ns,
                name: &t.metadata.name,
                parent: &e.metadata.name,
                body: tv,
            });
        }
        if let Err(err) = self.store.put_objects(&rows) {
            tracing::error!("saving execution {}: {err}", e.metadata.name);
        }
    }

    async fn drive(self: &Arc<Self>, run: Arc<Run>, cancel: watch::Receiver<bool>) {
        {
            let mut e = run.execution.lock().unwrap_or_else(|e| e.into_inner());
            let st = e.status.get_or_insert_with(Default::default);
            st.start_time.get_or_insert_with(now_rfc3339);
            // The image is resolved and pinned: what Cloud Run calls resources available.
            set_condition(
                &mut st.conditions,
                condition("ResourcesAvailable", "True", None, None),
            );
            set_condition(&mut st.conditions, condition("Started", "True", None, None));
        }
        self.save(&run, None);
        let sem = Arc::new(Semaphore::new(run.settings.parallelism as usize));
        let mut handles = Vec::new();
        for i in 0..run.tasks.len() {
            if run.tasks[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .status
                .state
                .is_final()
            {
                continue;
            }
            // Permits are taken here, in index order, so tasks start in order.
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let run = run.clone();
            let cancel = cancel.clone();
            handles.push(tokio::spawn(async move {
                this.run_task(&run, i, cancel).await;
                drop(permit);
            }));
        }
        futures::future::join_all(handles).await;
        if *self.shutdown.borrow() {
            return;
        }
        let (job, name, completion) = {
            let mut e = run.execution.lock().unwrap_or_else(|e| e.into_inner());
            let states: Vec<TaskState> = run
                .tasks
                .iter()
                .map(|t| t.lock().unwrap_or_else(|e| e.into_inner()).status.state)
                .collect();
            let failed = states.iter().filter(|s| **s == TaskState::Failed).count();
            // What the first failed task's last attempt did, for the execution's message.
            let first_failure = run.tasks.iter().find_map(|t| {
                let t = t.lock().unwrap_or_else(|e| e.into_inner());
                (t.status.state == TaskState::Failed).then(|| {
                    let why = t
                        .status
                        .last_attempt_result
                        .as_ref()
                        .map(|r| r.status.message.clone())
                        .unwrap_or_default();
                    format!("task {}: {why}", t.metadata.name)
                })
            });
            let cancelled = states
                .iter()
                .filter(|s| **s == TaskState::Cancelled)
                .count();
            let now = now_rfc3339();
            let st = e.status.get_or_insert_with(Default::default);
            st.completion_time = Some(now.clone());
            let c = if cancelled > 0 {
                condition(
                    "Completed",
                    "False",
                    Some("Cancelled"),
                    Some(format!(
                        "The execution was cancelled; {cancelled} task(s) did not finish"
                    )),
                )
            } else if failed > 0 {
                condition("Completed", "False", Some("TasksFailed"), Some(format!(
                    "Task(s) failed: {failed} of {} did not succeed after {} retries ({}); see `skiff jobs executions describe {}`",
                    states.len(), run.settings.max_retries, first_failure.unwrap_or_default(), e.metadata.name
                )))
            } else {
                condition(
                    "Completed",
                    "True",
                    None,
                    Some(format!("{} task(s) succeeded", states.len())),
                )
            };
            let st = e.status.get_or_insert_with(Default::default);
            set_condition(&mut st.conditions, c);
            (
                e.metadata
                    .labels
                    .get(LABEL_JOB)
                    .cloned()
                    .unwrap_or_default(),
                e.metadata.name.clone(),
                now,
            )
        };
        self.save(&run, None);
        // Record the completion on the job when this is still its latest execution.
        if let Ok(Some(mut j)) = self.store.get_object::<Job>(kind::JOB, &run.ns, &job) {
            if let Some(latest) = j
                .status
                .as_mut()
                .and_then(|s| s.latest_created_execution.as_mut())
            {
                if latest.name == name {
                    latest.completion_timestamp = Some(completion);
                    let _ = self.store.put_object(kind::JOB, &run.ns, &job, "", &j);
                }
            }
        }
        if let Some(hook) = self.finished.get() {
            hook(&run.ns, &job, &name);
        }
    }

    fn instance_config(
        &self,
        run: &Run,
        index: u64,
        attempt: u64,
        exec: &str,
        job: &str,
    ) -> InstanceConfig {
        let s = &run.settings;
        let id = format!("{exec}-{index}-{attempt}");
        let platform = [
            ("CLOUD_RUN_JOB", job.to_string()),
            ("CLOUD_RUN_EXECUTION", exec.to_string()),
            ("CLOUD_RUN_TASK_INDEX", index.to_string()),
            ("CLOUD_RUN_TASK_COUNT", s.task_count.to_string()),
            ("CLOUD_RUN_TASK_ATTEMPT", attempt.to_string()),
        ];
        let (memory_volumes, host_volumes) =
            skiff_runtime::volume_mounts(&s.memory_volumes, &s.host_volumes);
        InstanceConfig {
            dir: self.cfg.instances_dir.join(&id),
            id,
            state_root: self.cfg.state_root.clone(),
            layers: run.image.layers.clone(),
            args: skiff_runtime::process_args(
                &run.image.entrypoint,
                &run.image.cmd,
                &s.command,
                &s.args,
            ),
            env: skiff_runtime::merge_env(&run.image.env, &s.env, &platform),
            cwd: s
                .working_dir
                .clone()
                .or_else(|| run.image.working_dir.clone())
                .unwrap_or_else(|| "/".into()),
            user: run.image.user.clone(),
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
        }
    }

    /// Runs one task to its end: attempts until success, `maxRetries` failures, cancel or
    /// server shutdown.
    async fn run_task(&self, run: &Run, i: usize, mut cancel: watch::Receiver<bool>) {
        let mut shutdown = self.shutdown.subscribe();
        let (exec, job) = {
            let e = run.execution.lock().unwrap_or_else(|e| e.into_inner());
            (
                e.metadata.name.clone(),
                e.metadata
                    .labels
                    .get(LABEL_JOB)
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        loop {
            if *shutdown.borrow() {
                return;
            }
            if *cancel.borrow() {
                self.finish_task(
                    run,
                    i,
                    TaskState::Cancelled,
                    None,
                    "cancelled before it ran".into(),
                );
                return;
            }
            let (attempt, task_name) = {
                let mut t = run.tasks[i].lock().unwrap_or_else(|e| e.into_inner());
                let attempt = t.status.attempts;
                t.status.attempts += 1;
                run.set_state(&mut t, TaskState::Running);
                t.status.start_time.get_or_insert_with(now_rfc3339);
                set_condition(
                    &mut t.status.conditions,
                    condition(
                        "Completed",
                        "Unknown",
                        Some("Running"),
                        Some(format!("attempt {attempt}")),
                    ),
                );
                (attempt, t.metadata.name.clone())
            };
            self.save(run, Some(i));
            let mut cfg = self.instance_config(run, i as u64, attempt, &exec, &job);
            let source = LogSource {
                namespace: run.ns.clone(),
                job: job.clone(),
                execution: exec.clone(),
                task: task_name.clone(),
                attempt: Some(attempt),
                ..Default::default()
            };
            let meter = self.cfg.meters.start(
                skiff_metering::InstanceInfo {
                    id: cfg.id.clone(),
                    namespace: run.ns.clone(),
                    kind: skiff_metering::Kind::Job,
                    owner: job.clone(),
                    revision: exec.clone(),
                    task: Some(format!("{i}/{attempt}")),
                    mode: skiff_metering::Billing::Instance,
                    cpu_millis: cfg.cpu_millis,
                    memory_bytes: cfg.memory_bytes,
                },
                skiff_metering::now_ms(),
            );
            // Held until the attempt has ended: dropping it removes the task's interface.
            let lease = match &self.cfg.network {
                None => Ok(None),
                Some(net) => net
                    .acquire(skiff_network::Owner::new(
                        &run.ns,
                        &cfg.id,
                        run.settings.service_account.as_deref(),
                    ))
                    .await
                    .map(Some)
                    .map_err(|e| format!("no network for the task: {e}")),
            };
            // Secret references resolve now, at each attempt's start (`latest` moves on).
            let resolved = if run.settings.secret_env.is_empty()
                && run.settings.secret_volumes.is_empty()
            {
                Ok(Default::default())
            } else {
                let secrets = self.cfg.secrets.clone();
                let ns = run.ns.clone();
                let (env, vols) = (
                    run.settings.secret_env.clone(),
                    run.settings.secret_volumes.clone(),
                );
                match tokio::task::spawn_blocking(move || secrets.material(&ns, &env, &vols)).await
                {
                    Ok(Ok(m)) => Ok(m),
                    Ok(Err(e)) => Err(format!("cannot resolve a secret: {e}")),
                    Err(e) => Err(format!("cannot resolve secrets: {e}")),
                }
            };
            let lease = match (lease, resolved) {
                (Ok(l), Ok(m)) => {
                    cfg.secrets = m;
                    Ok(l)
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            let spawned = match &lease {
                Err(e) => Err(skiff_runtime::RuntimeError::Start(e.clone())),
                Ok(lease) => {
                    if let Some(l) = lease {
                        meter.set_net_reader(l.net_reader());
                    }
                    (cfg.hosts, cfg.resolv_conf) =
                        skiff_network::etc_files(lease.as_ref(), &cfg.hostname);
                    cfg.joins_netns = lease.is_some();
                    let netns = lease.as_ref().map(|l| l.netns());
                    supervisor::spawn(&self.cfg.shim_exe, &cfg, netns).await
                }
            };
            let (exit, timed_out, cancelled, oom) = match spawned {
                Err(e) => {
                    meter.end(skiff_metering::now_ms(), None);
                    (Exit::Failed(e.to_string()), false, false, None)
                }
                Ok((rt, out)) => {
                    let readers = [
                        skiff_runtime::logs::capture(
                            self.cfg.logs.clone(),
                            source.clone(),
                            "stdout",
                            out.stdout,
                            |_| {},
                        ),
                        skiff_runtime::logs::capture(
                            self.cfg.logs.clone(),
                            source.clone(),
                            "stderr",
                            out.stderr,
                            |_| {},
                        ),
                    ];
                    let mut timed_out = false;
                    let mut cancelled = false;
                    let exit = tokio::select! {
                        e = rt.wait() => e,
                        _ = tokio::time::sleep(run.settings.timeout) => {
                            timed_out = true;
                            rt.stop(STOP_GRACE).await
                        }
                        _ = async { drop(cancel.wait_for(|c| *c).await) } => {
                            cancelled = true;
                            rt.stop(STOP_GRACE).await
                        }
                        _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                            meter.with_meter(|m| m.stopping(skiff_metering::now_ms()));
                            rt.stop(STOP_GRACE).await;
                            meter.end(skiff_metering::now_ms(), rt.final_usage());
                            return;
                        }
                    };
                    meter.end(skiff_metering::now_ms(), rt.final_usage());
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        futures::future::join_all(readers),
                    )
                    .await;
                    let oom = skiff_runtime::cgroup::oom_message(
                        rt.final_usage().as_ref(),
                        cfg.memory_bytes,
                    );
                    (exit, timed_out, cancelled, oom)
                }
            };
            let code = match &exit {
                Exit::Code(c) => Some(*c),
                _ => None,
            };
            let message = if timed_out {
                format!(
                    "attempt {attempt} timed out after {}s",
                    run.settings.timeout.as_secs()
                )
            } else if let Some(oom) = oom {
                format!("attempt {attempt}: {oom}: the container {exit}")
            } else {
                format!("attempt {attempt} {exit}")
            };
            self.cfg
                .logs
                .push(&source, "system", format!("task {task_name} {message}"));
            {
                let mut t = run.tasks[i].lock().unwrap_or_else(|e| e.into_inner());
                t.status.exit_codes.push(code);
                t.status.last_attempt_result = Some(AttemptResult {
                    exit_code: code,
                    status: ResultStatus {
                        code: i32::from(code != Some(0)),
                        message: message.clone(),
                    },
                });
            }
            if cancelled {
                self.finish_task(run, i, TaskState::Cancelled, code, message);
                return;
            }
            if code == Some(0) && !timed_out {
                self.finish_task(run, i, TaskState::Succeeded, code, message);
                return;
            }
            let give_up = {
                let mut t = run.tasks[i].lock().unwrap_or_else(|e| e.into_inner());
                t.status.failures += 1;
                let give_up = t.status.failures > run.settings.max_retries;
                if !give_up {
                    run.add_retry(&mut t);
                }
                give_up
            };
            if give_up {
                self.finish_task(run, i, TaskState::Failed, code, message);
                return;
            }
        }
    }

    fn finish_task(
        &self,
        run: &Run,
        i: usize,
        state: TaskState,
        code: Option<i32>,
        message: String,
    ) {
        {
            let mut t = run.tasks[i].lock().unwrap_or_else(|e| e.into_inner());
            run.set_state(&mut t, state);
            t.status.completion_time = Some(now_rfc3339());
            let (status, reason) = match state {
                TaskState::Succeeded => ("True", "Succeeded"),
                TaskState::Cancelled => ("False", "Cancelled"),
                _ => ("False", "Failed"),
            };
            let msg = match code {
                Some(c) if state != TaskState::Succeeded => format!("{message} (exit code {c})"),
                _ => message,
            };
            set_condition(
                &mut t.status.conditions,
                condition("Completed", status, Some(reason), Some(msg)),
            );
        }
        self.save(run, Some(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_follows_state_changes() {
        let mut tasks = vec![Task::default(), Task::default(), Task::default()];
        tasks[2].status.state = TaskState::Succeeded;
        tasks[2].status.retried = 2;
        let mut spec = ExecutionSpec::default();
        spec.template.spec.containers.push(Container {
            image: "img".into(),
            ..Default::default()
        });
        let run = Run::new(
            "default".into(),
            Execution::default(),
            tasks,
            TaskSettings::from_spec(&spec).unwrap_or_else(|e| panic!("{e}")),
            ResolvedImage::default(),
        );
        let tally = || *run.tally.lock().unwrap();
        assert_eq!(tally().count(TaskState::Pending), 2);
        assert_eq!(tally().count(TaskState::Succeeded), 1);
        assert_eq!(tally().retried, 2);
        {
            let mut t = run.tasks[0].lock().unwrap();
            run.set_state(&mut t, TaskState::Running);
            run.add_retry(&mut t);
            run.set_state(&mut t, TaskState::Failed);
        }
        let t = tally();
        assert_eq!(
            (
                t.count(TaskState::Pending),
                t.count(TaskState::Running),
                t.count(TaskState::Failed),
                t.retried
            ),
            (1, 0, 1, 3)
        );
        assert_eq!(
            t,
            Tally::of(
                &run.tasks
                    .iter()
                    .map(|t| t.lock().unwrap().clone())
                    .collect::<Vec<_>>()
            )
        );
    }

    #[test]
    fn overrides_apply() {
        let mut spec = ExecutionSpec::default();
        spec.template.spec.containers.push(Container {
            image: "img".into(),
            args: vec!["a".into()],
            env: vec![EnvVar {
                name: "K".into(),
                value: "old".into(),
                value_from: None,
            }],
            ..Default::default()
        });
        let o = Overrides {
            args: Some(vec!["b".into()]),
            env: vec![("K".into(), "new".into()), ("N".into(), "1".into())],
            task_count: Some(7),
            timeout_seconds: Some(30),
        };
        let s = apply_overrides(spec, &o);
        assert_eq!(s.task_count, Some(7));
        assert_eq!(s.template.spec.timeout_seconds, Some(30));
        let c = &s.template.spec.containers[0];
        assert_eq!(c.args, vec!["b".to_string()]);
        let env: Vec<_> = c
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, [("K", "new"), ("N", "1")]);
        let plain = apply_overrides(s.clone(), &Overrides::default());
        assert_eq!(plain, s);
    }

    #[test]
    fn digests() {
        assert_eq!(pinned_digest("web@sha256:ab"), "sha256:ab");
        assert_eq!(pinned_digest("sha256:ab"), "sha256:ab");
    }
}
