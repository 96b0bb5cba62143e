//! `skiff jobs ...`: create, update, deploy (create or update, from an image or a source
//! directory), list, describe, delete and execute jobs; list, describe and cancel executions —
//! Cloud Run Jobs over `run.googleapis.com/v1`.

use crate::api::Api;
use crate::deploy::{parse_env, split_list};
use crate::output::{key_values, or_dash, print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Result};
use reqwest::Method;
use serde_json::{json, Value};
use skiff_model::*;
use std::time::{Duration, Instant};

const RUN: &str = "/apis/run.googleapis.com/v1";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobArgs {
    #[arg(value_name = "JOB")]
    pub job: String,
    /// Image to run, NAME[:TAG] or NAME@sha256:HEX
    #[arg(long)]
    pub image: Option<String>,
    /// Number of tasks (1..10000)
    #[arg(long)]
    pub tasks: Option<u64>,
    /// Tasks run at once (0 = all)
    #[arg(long)]
    pub parallelism: Option<u64>,
    /// Retries of a failed task (0..10)
    #[arg(long)]
    pub max_retries: Option<u64>,
    /// Time a task attempt may run (e.g. 10m, max 168h)
    #[arg(long, value_name = "DURATION")]
    pub task_timeout: Option<String>,
    /// Environment, replacing the job's: K=V,K2=V2
    #[arg(long, value_name = "K=V,...")]
    pub set_env_vars: Option<String>,
    /// Replace all secret references: ENV=SECRET:VERSION or /dir/file=SECRET:VERSION,...
    /// (VERSION: latest, resolved at each task start, or a number)
    #[arg(
        long,
        value_name = "TARGET=SECRET:VERSION,...",
        conflicts_with_all = ["update_secrets", "remove_secrets", "clear_secrets"]
    )]
    pub set_secrets: Option<String>,
    /// Add or change secret references TARGET=SECRET:VERSION,...
    #[arg(
        long,
        value_name = "TARGET=SECRET:VERSION,...",
        conflicts_with = "clear_secrets"
    )]
    pub update_secrets: Option<String>,
    /// Remove secret references by env name or file path: TARGET,...
    #[arg(long, value_name = "TARGET,...", conflicts_with = "clear_secrets")]
    pub remove_secrets: Option<String>,
    /// Remove every secret reference
    #[arg(long)]
    pub clear_secrets: bool,
    /// Entrypoint override, comma separated
    #[arg(long, allow_hyphen_values = true)]
    pub command: Option<String>,
    /// Arguments, comma separated
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// CPU per task (1, 0.5, 500m)
    #[arg(long)]
    pub cpu: Option<String>,
    /// Memory per task (512Mi, 1Gi)
    #[arg(long)]
    pub memory: Option<String>,
    /// The service account the tasks run as [default: the project's Compute Engine default
    /// service account]
    #[arg(long, value_name = "EMAIL")]
    pub service_account: Option<String>,
}

/// `skiff jobs deploy`: the job flags, and the image or a source directory to build it from
/// (gcloud's `run jobs deploy JOB --image REF | --source DIR`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct JobDeployArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Build the image from this source directory (its Dockerfile, or a detected language:
    /// Python, Node.js, Go, a static site) and run the job with it
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub source: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub build: crate::builds::SourceOptions,
}

#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// Create a job
    Create(JobArgs),
    /// Change a job (only the flags given)
    Update(JobArgs),
    /// Create a job, or change it if it exists, from --image or from --source DIR
    Deploy(Box<JobDeployArgs>),
    /// List jobs
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a job
    Describe {
        #[arg(value_name = "JOB")]
        job: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a job and its executions
    Delete {
        #[arg(value_name = "JOB")]
        job: String,
    },
    /// Start an execution; prints its name
    Execute {
        #[arg(value_name = "JOB")]
        job: String,
        /// Wait for the execution to finish; exit 0 only if it succeeded
        #[arg(long)]
        wait: bool,
        /// Number of tasks for this execution
        #[arg(long)]
        tasks: Option<u64>,
        /// Arguments for this execution, comma separated
        #[arg(long, allow_hyphen_values = true)]
        args: Option<String>,
        /// Extra environment for this execution: K=V,...
        #[arg(long, value_name = "K=V,...")]
        update_env_vars: Option<String>,
        /// Task timeout for this execution
        #[arg(long, value_name = "DURATION")]
        task_timeout: Option<String>,
    },
    /// List, describe and cancel executions
    Executions {
        #[command(subcommand)]
        command: ExecutionsCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ExecutionsCommand {
    /// List executions, newest first
    List {
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show an execution with each task's state, attempts and exit codes
    Describe {
        #[arg(value_name = "EXECUTION")]
        execution: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Stop an execution's running tasks and mark it cancelled
    Cancel {
        #[arg(value_name = "EXECUTION")]
        execution: String,
    },
}

fn path(api: &Api, kind: &str, name: Option<&str>) -> String {
    let mut p = format!(
        "{RUN}/namespaces/{}/{kind}",
        crate::api::encode(&api.project)
    );
    if let Some(n) = name {
        p.push('/');
        p.push_str(&crate::api::encode(n));
    }
    p
}

fn timeout_secs(s: &str) -> Result<u64> {
    let d = parse_duration(s).map_err(|e| anyhow!("{e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        bail!("invalid task timeout {s:?}: use whole seconds, like 30s, 10m or 1h");
    }
    Ok(d.as_secs())
}

/// Applies the flags given to a job (a new one, or the stored one for update).
pub fn apply(job: &mut Job, a: &JobArgs) -> Result<()> {
    let spec = &mut job.spec.template.spec;
    if let Some(n) = a.tasks {
        spec.task_count = Some(n);
    }
    if let Some(p) = a.parallelism {
        spec.parallelism = Some(p);
    }
    let task = &mut spec.template.spec;
    if let Some(r) = a.max_retries {
        task.max_retries = Some(r);
    }
    if let Some(t) = &a.task_timeout {
        task.timeout_seconds = Some(timeout_secs(t)?);
    }
    if let Some(sa) = &a.service_account {
        let sa = sa.trim();
        skiff_model::validate_service_account(sa).map_err(|e| anyhow!("--service-account: {e}"))?;
        task.service_account_name = Some(sa.to_string());
    }
    if task.containers.is_empty() {
        task.containers.push(Container::default());
    }
    let c = &mut task.containers[0];
    if let Some(i) = &a.image {
        c.image = i.clone();
    }
    if let Some(e) = &a.set_env_vars {
        // Env vars from secrets are the secret flags' to change.
        c.env.retain(|e| e.value_from.is_some());
        c.env
            .extend(parse_env(e)?.into_iter().map(|(name, value)| EnvVar {
                name,
                value,
                value_from: None,
            }));
    }
    let secrets = crate::secretrefs::SecretFlags::parse(
        a.set_secrets.as_deref(),
        a.update_secrets.as_deref(),
        a.remove_secrets.as_deref(),
        a.clear_secrets,
    )?;
    crate::secretrefs::apply(c, &mut task.volumes, &secrets)?;
    if let Some(cmd) = &a.command {
        c.command = split_list(cmd);
    }
    if let Some(args) = &a.args {
        c.args = split_list(args);
    }
    let limits = &mut c.resources.get_or_insert_with(Default::default).limits;
    if let Some(cpu) = &a.cpu {
        parse_cpu(cpu).map_err(|e| anyhow!("{e}"))?;
        limits.insert("cpu".into(), cpu.clone());
    }
    if let Some(m) = &a.memory {
        parse_size(m).map_err(|e| anyhow!("{e}"))?;
        limits.insert("memory".into(), m.clone());
    }
    if limits.is_empty() {
        c.resources = None;
    }
    TaskSettings::from_spec(&job.spec.template.spec).map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// A new job from the flags.
pub fn new_job(project: &str, a: &JobArgs) -> Result<Job> {
    validate_name("job", &a.job, 63).map_err(|e| anyhow!("{e}"))?;
    if a.image.is_none() {
        bail!("pass --image NAME[:TAG] to create job {}", a.job);
    }
    let mut job = Job {
        api_version: RUN_API_VERSION.into(),
        kind: "Job".into(),
        ..Default::default()
    };
    job.metadata.name = a.job.clone();
    job.metadata.namespace = project.to_string();
    apply(&mut job, a)?;
    Ok(job)
}

fn condition<'a>(conds: &'a [Condition], t: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == t)
}

/// `Succeeded`, `Failed`, `Cancelled` or `Running`, from an execution's Completed condition.
pub fn execution_state(e: &Execution) -> &'static str {
    let st = e.status.clone().unwrap_or_default();
    match condition(&st.conditions, "Completed") {
        Some(c) if c.status == "True" => "Succeeded",
        Some(c) if c.status == "False" && c.reason.as_deref() == Some("Cancelled") => "Cancelled",
        Some(c) if c.status == "False" => "Failed",
        _ => "Running",
    }
}

/// A registry image given with `--image` is pulled before the job is written, so that the
/// user sees its download; the server then finds it in the store.
fn pull_first(api: &Api, a: &JobArgs) -> Result<()> {
    if let Some(image) = a
        .image
        .as_deref()
        .filter(|i| skiff_registry::is_registry_reference(i))
    {
        crate::images::pull(api, image)?;
    }
    Ok(())
}

/// `jobs deploy`: checks every flag (against the stored job, if any) before building, so a
/// build is not wasted on a deploy that would be refused; builds `--source` under the job's
/// name; then creates or updates the job with the image as `--image` would. A failed build
/// leaves the job as it was.
fn deploy(api: &Api, d: JobDeployArgs) -> Result<()> {
    let mut a = d.job.clone();
    validate_name("job", &a.job, 63).map_err(|e| anyhow!("{e}"))?;
    if let Some(dir) = &d.source {
        if !dir.is_dir() {
            bail!(
                "--source {}: no such directory: give the directory that holds the source",
                dir.display()
            );
        }
        d.build.check()?;
    } else if d.build.set_build_env_vars.is_some()
        || d.build.base_image.is_some()
        || d.build.build_timeout.is_some()
    {
        bail!("--set-build-env-vars, --base-image and --build-timeout apply to --source builds: add --source DIR");
    }
    let p = path(api, "jobs", Some(&a.job));
    let existing: Option<Job> = api.get_opt(&p)?;
    if existing.is_none() && a.image.is_none() && d.source.is_none() {
        bail!(
            "job {} does not exist yet: pass --image NAME[:TAG] or --source DIR to create it",
            a.job
        );
    }
    let write = |a: &JobArgs| -> Result<Job> {
        match &existing {
            Some(old) => {
                let mut job = old.clone();
                job.status = None;
                apply(&mut job, a)?;
                Ok(job)
            }
            None => new_job(&api.project, a),
        }
    };
    if let Some(dir) = &d.source {
        let mut check = a.clone();
        check.image = Some("source-build".into());
        write(&check)?;
        let built = crate::builds::submit(api, dir, crate::builds::Target::Job(&a.job), &d.build)?;
        let image = built
            .results
            .and_then(|r| r.images.into_iter().next())
            .ok_or_else(|| anyhow!("build {} succeeded without an image", built.id))?;
        eprintln!("Built image {}@{}.", image.name, image.digest);
        a.image = Some(image.name);
    }
    let job = write(&a)?;
    pull_first(api, &a)?;
    eprintln!("Deploying job [{}] in project [{}]...", a.job, api.project);
    if existing.is_some() {
        let _: Job = api.send_json(Method::PUT, &p, &job)?;
    } else {
        let _: Job = api.send_json(Method::POST, &path(api, "jobs", None), &job)?;
    }
    eprintln!("Job [{}] has successfully been deployed.", a.job);
    eprintln!("To execute this job, use: skiff jobs execute {}", a.job);
    Ok(())
}

pub fn run(api: &Api, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::Deploy(d) => deploy(api, *d),
        JobsCommand::Create(a) => {
            let job = new_job(&api.project, &a)?;
            pull_first(api, &a)?;
            let _: Job = api.send_json(Method::POST, &path(api, "jobs", None), &job)?;
            eprintln!("Job [{}] has been created.", a.job);
            Ok(())
        }
        JobsCommand::Update(a) => {
            let p = path(api, "jobs", Some(&a.job));
            let mut job: Job = api.get(&p, &[])?;
            job.status = None;
            apply(&mut job, &a)?;
            pull_first(api, &a)?;
            let _: Job = api.send_json(Method::PUT, &p, &job)?;
            eprintln!("Job [{}] has been updated.", a.job);
            Ok(())
        }
        JobsCommand::List { format } => {
            let v: Value = api.get(&path(api, "jobs", None), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let jobs: Vec<Job> = serde_json::from_value(v["items"].clone()).unwrap_or_default();
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    let st = j.status.clone().unwrap_or_default();
                    vec![
                        j.metadata.name.clone(),
                        j.spec
                            .template
                            .spec
                            .template
                            .spec
                            .containers
                            .first()
                            .map(|c| c.image.clone())
                            .unwrap_or_default(),
                        j.spec.template.spec.task_count.unwrap_or(1).to_string(),
                        st.execution_count.to_string(),
                        or_dash(
                            st.latest_created_execution
                                .as_ref()
                                .map(|e| e.name.as_str()),
                        ),
                    ]
                })
                .collect();
            print_table(&["JOB", "IMAGE", "TASKS", "EXECUTIONS", "LATEST"], &rows);
            Ok(())
        }
        JobsCommand::Describe { job, format } => {
            let v: Value = api.get(&path(api, "jobs", Some(&job)), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == DescribeFormat::Yaml);
            }
            let j: Job = serde_json::from_value(v)
                .map_err(|e| anyhow!("unexpected job from the Skiff API: {e}"))?;
            let s = TaskSettings::from_spec(&j.spec.template.spec).map_err(|e| anyhow!("{e}"))?;
            let st = j.status.clone().unwrap_or_default();
            print!(
                "{}",
                key_values(&[
                    ("Job", j.metadata.name.clone()),
                    ("Image", s.image),
                    ("Tasks", s.task_count.to_string()),
                    ("Parallelism", s.parallelism.to_string()),
                    ("Max retries", s.max_retries.to_string()),
                    ("Task timeout", format_duration(s.timeout)),
                    ("CPU", format!("{}m", s.cpu_millis)),
                    ("Memory", format!("{}Mi", s.memory_bytes >> 20)),
                    ("Command", s.command.join(" ")),
                    ("Args", s.args.join(" ")),
                    (
                        "Env",
                        s.env
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    ("Executions", st.execution_count.to_string()),
                    (
                        "Latest",
                        or_dash(
                            st.latest_created_execution
                                .as_ref()
                                .map(|e| e.name.as_str())
                        )
                    ),
                ])
            );
            Ok(())
        }
        JobsCommand::Delete { job } => {
            api.delete(&path(api, "jobs", Some(&job)))?;
            eprintln!("Deleted job [{job}].");
            Ok(())
        }
        JobsCommand::Execute {
            job,
            wait,
            tasks,
            args,
            update_env_vars,
            task_timeout,
        } => {
            let mut overrides = json!({});
            if let Some(n) = tasks {
                overrides["taskCount"] = json!(n);
            }
            if let Some(t) = &task_timeout {
                overrides["timeoutSeconds"] = json!(timeout_secs(t)?);
            }
            let mut c = json!({});
            if let Some(a) = &args {
                c["args"] = json!(split_list(a));
                c["clearArgs"] = json!(split_list(a).is_empty());
            }
            if let Some(e) = &update_env_vars {
                let env: Vec<Value> = parse_env(e)?
                    .into_iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect();
                c["env"] = json!(env);
            }
            if c.as_object().is_some_and(|o| !o.is_empty()) {
                overrides["containerOverrides"] = json!([c]);
            }
            let run_path = format!("{}:run", path(api, "jobs", Some(&job)));
            let e: Execution =
                api.send_json(Method::POST, &run_path, &json!({"overrides": overrides}))?;
            let name = e.metadata.name.clone();
            println!("{name}");
            if !wait {
                return Ok(());
            }
            eprintln!("Waiting for execution [{name}] to finish...");
            let done = wait_done(api, &name)?;
            let st = done.status.clone().unwrap_or_default();
            match execution_state(&done) {
                "Succeeded" => {
                    eprintln!(
                        "Execution [{name}] succeeded: {} task(s).",
                        st.succeeded_count
                    );
                    Ok(())
                }
                other => {
                    let msg = condition(&st.conditions, "Completed")
                        .and_then(|c| c.message.clone())
                        .unwrap_or_default();
                    bail!("execution {name} {}: {msg}", other.to_lowercase())
                }
            }
        }
        JobsCommand::Executions { command } => executions(api, command),
    }
}

/// Tasks `executions describe` shows in its table (Cloud Run allows 10 000 per execution).
const DESCRIBE_TASKS: usize = 100;

fn wait_done(api: &Api, name: &str) -> Result<Execution> {
    let p = path(api, "executions", Some(name));
    let deadline = Instant::now() + Duration::from_secs(7 * 24 * 3600);
    loop {
        let e: Execution = api.get(&p, &[])?;
        if execution_state(&e) != "Running" {
            return Ok(e);
        }
        if Instant::now() > deadline {
            bail!("execution {name} is still running");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn executions(api: &Api, cmd: ExecutionsCommand) -> Result<()> {
    match cmd {
        ExecutionsCommand::List { job, format } => {
            let sel = job.map(|j| format!("{LABEL_JOB}={j}"));
            let q: Vec<(&str, &str)> = sel
                .as_deref()
                .map(|s| vec![("labelSelector", s)])
                .unwrap_or_default();
            let v: Value = api.get(&path(api, "executions", None), &q)?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let list: Vec<Execution> =
                serde_json::from_value(v["items"].clone()).unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|e| {
                    let st = e.status.clone().unwrap_or_default();
                    vec![
                        e.metadata.name.clone(),
                        e.metadata
                            .labels
                            .get(LABEL_JOB)
                            .cloned()
                            .unwrap_or_default(),
                        execution_state(e).to_string(),
                        format!("{}/{}", st.succeeded_count, e.spec.task_count.unwrap_or(1)),
                        or_dash(st.start_time.as_deref()),
                        or_dash(st.completion_time.as_deref()),
                    ]
                })
                .collect();
            print_table(
                &[
                    "EXECUTION",
                    "JOB",
                    "STATE",
                    "SUCCEEDED",
                    "STARTED",
                    "COMPLETED",
                ],
                &rows,
            );
            Ok(())
        }
        ExecutionsCommand::Describe { execution, format } => {
            let v: Value = api.get(&path(api, "executions", Some(&execution)), &[])?;
            let sel = format!("{LABEL_EXECUTION}={execution}");
            let tasks_path = path(api, "tasks", None);
            if let Some(f) = format {
                let tasks: Value = api.get(&tasks_path, &[("labelSelector", &sel)])?;
                let mut all = v.clone();
                all["tasks"] = tasks["items"].clone();
                return print_machine(&all, f == DescribeFormat::Yaml);
            }
            // The table shows the first tasks; the machine formats list them all.
            let shown = DESCRIBE_TASKS.to_string();
            let tasks: Value = api.get(
                &tasks_path,
                &[("labelSelector", &sel), ("limit", shown.as_str())],
            )?;
            let more = tasks["metadata"]["continue"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            let e: Execution =
                serde_json::from_value(v).map_err(|e| anyhow!("unexpected execution: {e}"))?;
            let st = e.status.clone().unwrap_or_default();
            let msg = condition(&st.conditions, "Completed").and_then(|c| c.message.clone());
            print!(
                "{}",
                key_values(&[
                    ("Execution", e.metadata.name.clone()),
                    (
                        "Job",
                        e.metadata
                            .labels
                            .get(LABEL_JOB)
                            .cloned()
                            .unwrap_or_default()
                    ),
                    ("State", execution_state(&e).to_string()),
                    ("Message", or_dash(msg.as_deref())),
                    ("Started", or_dash(st.start_time.as_deref())),
                    ("Completed", or_dash(st.completion_time.as_deref())),
                    (
                        "Tasks",
                        format!(
                            "{} succeeded, {} failed, {} cancelled, {} running, {} retries",
                            st.succeeded_count,
                            st.failed_count,
                            st.cancelled_count,
                            st.running_count,
                            st.retried_count
                        ),
                    ),
                ])
            );
            let list: Vec<Task> =
                serde_json::from_value(tasks["items"].clone()).unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    let codes: Vec<String> = t
                        .status
                        .exit_codes
                        .iter()
                        .map(|c| c.map_or("-".to_string(), |c| c.to_string()))
                        .collect();
                    vec![
                        t.status.index.to_string(),
                        format!("{:?}", t.status.state),
                        t.status.attempts.to_string(),
                        codes.join(","),
                        or_dash(t.status.start_time.as_deref()),
                        or_dash(t.status.completion_time.as_deref()),
                    ]
                })
                .collect();
            println!();
            print_table(
                &[
                    "TASK",
                    "STATE",
                    "ATTEMPTS",
                    "EXIT-CODES",
                    "STARTED",
                    "COMPLETED",
                ],
                &rows,
            );
            if more {
                println!(
                    "(the first {DESCRIBE_TASKS} of {} tasks; `skiff jobs executions describe {} --format json` lists them all)",
                    e.spec.task_count.unwrap_or(1),
                    e.metadata.name
                );
            }
            Ok(())
        }
        ExecutionsCommand::Cancel { execution } => {
            let p = format!("{}:cancel", path(api, "executions", Some(&execution)));
            let e: Execution = api.send_json(Method::POST, &p, &json!({}))?;
            eprintln!(
                "Execution [{execution}] is {}.",
                execution_state(&e).to_lowercase()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut JobArgs)) -> JobArgs {
        let mut a = JobArgs {
            job: "batch".into(),
            image: Some("img".into()),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    #[test]
    fn flags_to_job() {
        let j = new_job(
            "p",
            &args(|a| {
                a.tasks = Some(6);
                a.parallelism = Some(2);
                a.max_retries = Some(1);
                a.task_timeout = Some("90s".into());
                a.set_env_vars = Some("A=1".into());
                a.args = Some("-c,exit 0".into());
                a.memory = Some("256Mi".into());
            }),
        )
        .unwrap();
        let s = TaskSettings::from_spec(&j.spec.template.spec).unwrap();
        assert_eq!((s.task_count, s.parallelism, s.max_retries), (6, 2, 1));
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert_eq!(s.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(s.args, vec!["-c".to_string(), "exit 0".to_string()]);
        assert_eq!(s.memory_bytes, 256 << 20);
        // update keeps what is not given
        let mut j2 = j.clone();
        apply(
            &mut j2,
            &JobArgs {
                job: "batch".into(),
                tasks: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
        let s2 = TaskSettings::from_spec(&j2.spec.template.spec).unwrap();
        assert_eq!((s2.task_count, s2.parallelism, s2.max_retries), (3, 2, 1));
    }

    #[test]
    fn bad_flags() {
        type Edit = fn(&mut JobArgs);
        let cases: &[(&str, Edit)] = &[
            ("tasks", |a| a.tasks = Some(0)),
            ("tasks", |a| a.tasks = Some(10_001)),
            ("retries", |a| a.max_retries = Some(11)),
            ("timeout", |a| a.task_timeout = Some("soon".into())),
            ("timeout", |a| a.task_timeout = Some("169h".into())),
            ("cpu", |a| a.cpu = Some("lots".into())),
            ("image", |a| a.image = None),
            ("name", |a| a.job = "Bad_Name".into()),
        ];
        for (what, edit) in cases {
            let a = args(*edit);
            assert!(new_job("p", &a).is_err(), "{what}");
        }
    }
}
