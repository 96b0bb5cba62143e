//! Cloud Run Jobs objects (`run.googleapis.com/v1` Job, Execution, Task) as the Admin API v1
//! serves them, the settings Skiff derives from a job, and Cloud Scheduler jobs.

use crate::{Condition, Container, InvalidInput, ObjectMeta};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const RUN_API_VERSION: &str = "run.googleapis.com/v1";
pub const LABEL_JOB: &str = "run.googleapis.com/job";
pub const LABEL_EXECUTION: &str = "run.googleapis.com/execution";
/// A task's state as a label, as Cloud Run shows it (`Pending`, `Running`, `Succeeded`, ...).
pub const LABEL_RUNNING_STATE: &str = "run.googleapis.com/runningState";
pub const MAX_TASKS: u64 = 10_000;
pub const MAX_RETRIES: u64 = 10;
pub const DEFAULT_RETRIES: u64 = 3;
pub const DEFAULT_TASK_TIMEOUT_SECS: u64 = 600;
pub const MAX_TASK_TIMEOUT_SECS: u64 = 168 * 3600;

fn run_api_version() -> String {
    RUN_API_VERSION.to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    #[serde(default = "run_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    #[serde(default)]
    pub template: ExecutionTemplate,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ExecutionSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<u64>,
    #[serde(default)]
    pub template: TaskTemplate,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    #[serde(default)]
    pub spec: TaskSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// The identity the tasks run as (Cloud Run's `serviceAccountName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Volumes the task's container may mount (in-memory `emptyDir` and `secret`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::Volume>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub execution_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_execution: Option<ExecutionReference>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    #[serde(default = "run_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ExecutionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ExecutionStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default)]
    pub running_count: u64,
    #[serde(default)]
    pub succeeded_count: u64,
    #[serde(default)]
    pub failed_count: u64,
    #[serde(default)]
    pub cancelled_count: u64,
    #[serde(default)]
    pub retried_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    #[serde(default = "run_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: TaskSpec,
    #[serde(default)]
    pub status: TaskStatus,
}

/// A task's state; `Condition`s carry it for Cloud Run clients, `state` for Skiff's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "Pending",
            TaskState::Running => "Running",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Cancelled => "Cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub state: TaskState,
    /// Attempts started so far (the running one included).
    #[serde(default)]
    pub attempts: u64,
    /// Attempts that failed (exit code, signal or timeout); an attempt cut short by a server
    /// restart is not counted here.
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub retried: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_result: Option<AttemptResult>,
    /// Exit code of every finished attempt, in order (`null` for a signal or timeout).
    #[serde(default)]
    pub exit_codes: Vec<Option<i32>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub status: ResultStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultStatus {
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
}

/// What an execution's tasks run with, read and validated from an execution spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSettings {
    pub image: String,
    pub task_count: u64,
    /// How many tasks run at once (already resolved: never 0).
    pub parallelism: u64,
    pub max_retries: u64,
    pub timeout: Duration,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// `serviceAccountName` (`None`: the project's default service account).
    pub service_account: Option<String>,
    /// In-memory volumes, as a service revision's.
    pub memory_volumes: Vec<crate::MemoryVolume>,
    /// Env vars from secrets, resolved when each task attempt starts.
    pub secret_env: Vec<crate::SecretEnv>,
    /// Secret volumes, resolved when each task attempt starts.
    pub secret_volumes: Vec<crate::SecretVolume>,
    /// Host directories mounted read-only, as a service revision's.
    pub host_volumes: Vec<crate::HostVolume>,
}

impl TaskSettings {
    pub fn from_spec(spec: &ExecutionSpec) -> Result<Self, InvalidInput> {
        let task = &spec.template.spec;
        let c = match task.containers.as_slice() {
            [c] => c,
            [] => {
                return Err(InvalidInput::new(
                    "the job has no container: give one with an image",
                ))
            }
            _ => {
                return Err(InvalidInput::new(
                    "the job has more than one container: give one",
                ))
            }
        };
        if c.image.trim().is_empty() {
            return Err(InvalidInput::new(
                "the job's container has no image: pass --image NAME[:TAG]",
            ));
        }
        for (given, field) in [
            (c.startup_probe.is_some(), "startupProbe"),
            (c.liveness_probe.is_some(), "livenessProbe"),
        ] {
            if given {
                return Err(InvalidInput::new(format!(
                    "the job's container has {field}: Skiff's job tasks do not take it; remove it"
                )));
            }
        }
        let task_count = spec.task_count.unwrap_or(1);
        if !(1..=MAX_TASKS).contains(&task_count) {
            return Err(InvalidInput::new(format!(
                "invalid task count {task_count}: use a value between 1 and {MAX_TASKS}"
            )));
        }
        let parallelism = match spec.parallelism.unwrap_or(0) {
            0 => task_count,
            p => p.min(task_count),
        };
        let max_retries = task.max_retries.unwrap_or(DEFAULT_RETRIES);
        if max_retries > MAX_RETRIES {
            return Err(InvalidInput::new(format!(
                "invalid max retries {max_retries}: use a value between 0 and {MAX_RETRIES}"
            )));
        }
        let timeout = task.timeout_seconds.unwrap_or(DEFAULT_TASK_TIMEOUT_SECS);
        if timeout == 0 || timeout > MAX_TASK_TIMEOUT_SECS {
            return Err(InvalidInput::new(format!(
                "invalid task timeout {timeout}s: use a value between 1s and 168h"
            )));
        }
        // Limits, env and command are read exactly as a service revision's are.
        let as_revision = crate::RevisionTemplate {
            metadata: ObjectMeta::default(),
            spec: crate::RevisionSpec {
                containers: vec![Container {
                    ports: vec![],
                    ..c.clone()
                }],
                service_account_name: task.service_account_name.clone(),
                volumes: task.volumes.clone(),
                ..Default::default()
            },
        };
        let r = crate::RevisionSettings::from_template(&as_revision)?;
        Ok(TaskSettings {
            image: r.image,
            task_count,
            parallelism,
            max_retries,
            timeout: Duration::from_secs(timeout),
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            env: r.env,
            command: r.command,
            args: r.args,
            working_dir: r.working_dir,
            service_account: r.service_account,
            memory_volumes: r.memory_volumes,
            secret_env: r.secret_env,
            secret_volumes: r.secret_volumes,
            host_volumes: r.host_volumes,
        })
    }
}

/// A Cloud Scheduler job (`/v1/projects/P/locations/L/jobs/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerJob {
    /// `projects/P/locations/L/jobs/NAME`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub schedule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_target: Option<HttpTarget>,
    /// Skiff's own target: run a Skiff job of the same project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_job_target: Option<RunJobTarget>,
    /// `ENABLED` or `PAUSED`.
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_update_time: Option<String>,
    /// The latest runs, newest last (Skiff keeps the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<SchedulerRun>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTarget {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_method: Option<String>,
    /// Base64, as Cloud Scheduler's API carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunJobTarget {
    pub job: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchedulerRun {
    pub time: String,
    /// `scheduled` or `manual`.
    pub trigger: String,
    pub success: bool,
    pub message: String,
}
