//! `skiff scheduler jobs ...`: cron-triggered runs of a Skiff job or calls of a URL, in the
//! shape of Cloud Scheduler's API (`/v1/projects/P/locations/L/jobs`).

use crate::api::{encode, Api};
use crate::output::{key_values, or_dash, print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Result};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use skiff_model::{HttpTarget, RunJobTarget, SchedulerJob};

#[derive(clap::Subcommand, Debug)]
pub enum SchedulerCommand {
    /// Scheduler jobs
    Jobs {
        #[command(subcommand)]
        command: SchedulerJobsCommand,
    },
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScheduleArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Unix cron schedule, e.g. "*/5 * * * *"
    #[arg(long)]
    pub schedule: String,
    /// IANA time zone of the schedule
    #[arg(long, default_value = "Etc/UTC")]
    pub time_zone: String,
    /// Run this Skiff job
    #[arg(long, conflicts_with = "uri")]
    pub job: Option<String>,
    /// Call this URL (a Skiff service URL gets an identity token)
    #[arg(long, required_unless_present = "job")]
    pub uri: Option<String>,
    /// HTTP method of the call
    #[arg(long, default_value = "POST", requires = "uri")]
    pub http_method: String,
    /// Body of the call
    #[arg(long, requires = "uri")]
    pub message_body: Option<String>,
    /// Headers of the call: K=V,...
    #[arg(long, value_name = "K=V,...", requires = "uri")]
    pub headers: Option<String>,
    /// Description
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SchedulerJobsCommand {
    /// Create a scheduler job
    Create(ScheduleArgs),
    /// Replace a scheduler job's schedule and target
    Update(ScheduleArgs),
    /// List scheduler jobs
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a scheduler job and its latest runs
    Describe {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a scheduler job
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Stop firing on schedule
    Pause {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Fire on schedule again
    Resume {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Run now
    Run {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

fn path(api: &Api, name: Option<&str>) -> String {
    let mut p = format!("/v1/projects/{}/locations/local/jobs", encode(&api.project));
    if let Some(n) = name {
        p.push('/');
        p.push_str(&encode(n));
    }
    p
}

/// The scheduler job the flags describe.
pub fn build(project: &str, a: &ScheduleArgs) -> Result<SchedulerJob> {
    let mut j = SchedulerJob {
        name: format!("projects/{project}/locations/local/jobs/{}", a.name),
        description: a.description.clone(),
        schedule: a.schedule.clone(),
        time_zone: Some(a.time_zone.clone()),
        ..Default::default()
    };
    match (&a.job, &a.uri) {
        (Some(job), None) => j.run_job_target = Some(RunJobTarget { job: job.clone() }),
        (None, Some(uri)) => {
            let headers = match &a.headers {
                Some(h) => parse_env_headers(h)?,
                None => Default::default(),
            };
            j.http_target = Some(HttpTarget {
                uri: uri.clone(),
                http_method: Some(a.http_method.to_uppercase()),
                body: a
                    .message_body
                    .as_ref()
                    .map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
                headers,
            });
        }
        _ => bail!("give exactly one target: --job JOB or --uri URL"),
    }
    skiff_jobs_validate(&j)?;
    Ok(j)
}

/// `NAME=VALUE,...` headers (names may hold '-', unlike env var names).
fn parse_env_headers(s: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for item in crate::deploy::split_list(s) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid header {item:?}: use NAME=VALUE"))?;
        out.insert(k.trim().to_string(), v.to_string());
    }
    Ok(out)
}

/// Schedule and time zone checks that need no server.
fn skiff_jobs_validate(j: &SchedulerJob) -> Result<()> {
    let fields = j.schedule.split_whitespace().count();
    if fields != 5 && !j.schedule.trim_start().starts_with('@') {
        bail!(
            "invalid schedule {:?}: use Unix cron with 5 fields (minute hour day-of-month month day-of-week), like \"*/5 * * * *\"",
            j.schedule
        );
    }
    Ok(())
}

pub fn run(api: &Api, cmd: SchedulerCommand) -> Result<()> {
    let SchedulerCommand::Jobs { command } = cmd;
    match command {
        SchedulerJobsCommand::Create(a) => {
            let j = build(&api.project, &a)?;
            let _: SchedulerJob = api.send_json(Method::POST, &path(api, None), &j)?;
            eprintln!("Created scheduler job [{}].", a.name);
            Ok(())
        }
        SchedulerJobsCommand::Update(a) => {
            let j = build(&api.project, &a)?;
            let _: SchedulerJob = api.send_json(Method::PATCH, &path(api, Some(&a.name)), &j)?;
            eprintln!("Updated scheduler job [{}].", a.name);
            Ok(())
        }
        SchedulerJobsCommand::List { format } => {
            let v: Value = api.get(&path(api, None), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let list: Vec<SchedulerJob> =
                serde_json::from_value(v["jobs"].clone()).unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|j| {
                    vec![
                        j.name.rsplit('/').next().unwrap_or_default().to_string(),
                        j.schedule.clone(),
                        j.time_zone.clone().unwrap_or_default(),
                        target(j),
                        j.state.clone(),
                        or_dash(j.schedule_time.as_deref()),
                    ]
                })
                .collect();
            print_table(
                &["NAME", "SCHEDULE", "TIME-ZONE", "TARGET", "STATE", "NEXT"],
                &rows,
            );
            Ok(())
        }
        SchedulerJobsCommand::Describe { name, format } => {
            let v: Value = api.get(&path(api, Some(&name)), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == DescribeFormat::Yaml);
            }
            let j: SchedulerJob =
                serde_json::from_value(v).map_err(|e| anyhow!("unexpected scheduler job: {e}"))?;
            print!(
                "{}",
                key_values(&[
                    ("Name", name.clone()),
                    ("Schedule", j.schedule.clone()),
                    ("Time zone", j.time_zone.clone().unwrap_or_default()),
                    ("Target", target(&j)),
                    ("State", j.state.clone()),
                    ("Next run", or_dash(j.schedule_time.as_deref())),
                    ("Last attempt", or_dash(j.last_attempt_time.as_deref())),
                ])
            );
            if !j.runs.is_empty() {
                println!();
                let rows: Vec<Vec<String>> = j
                    .runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.time.clone(),
                            r.trigger.clone(),
                            if r.success { "ok" } else { "failed" }.into(),
                            r.message.clone(),
                        ]
                    })
                    .collect();
                print_table(&["TIME", "TRIGGER", "RESULT", "MESSAGE"], &rows);
            }
            Ok(())
        }
        SchedulerJobsCommand::Delete { name } => {
            api.delete(&path(api, Some(&name)))?;
            eprintln!("Deleted scheduler job [{name}].");
            Ok(())
        }
        SchedulerJobsCommand::Pause { name } => verb(api, &name, "pause"),
        SchedulerJobsCommand::Resume { name } => verb(api, &name, "resume"),
        SchedulerJobsCommand::Run { name } => {
            let j: SchedulerJob = api.send_json(
                Method::POST,
                &format!("{}:run", path(api, Some(&name))),
                &json!({}),
            )?;
            match j.runs.last() {
                Some(r) if r.success => {
                    println!("{}", r.message);
                    Ok(())
                }
                Some(r) => bail!("scheduler job {name} ran and failed: {}", r.message),
                None => bail!("scheduler job {name} did not record a run"),
            }
        }
    }
}

fn verb(api: &Api, name: &str, v: &str) -> Result<()> {
    let j: SchedulerJob = api.send_json(
        Method::POST,
        &format!("{}:{v}", path(api, Some(name))),
        &json!({}),
    )?;
    eprintln!("Scheduler job [{name}] is {}.", j.state.to_lowercase());
    Ok(())
}

fn target(j: &SchedulerJob) -> String {
    match (&j.run_job_target, &j.http_target) {
        (Some(t), _) => format!("job {}", t.job),
        (None, Some(h)) => format!("{} {}", h.http_method.as_deref().unwrap_or("POST"), h.uri),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds() {
        let a = ScheduleArgs {
            name: "nightly".into(),
            schedule: "0 3 * * *".into(),
            time_zone: "Europe/Paris".into(),
            uri: Some("http://hello.localhost:8080/hook".into()),
            http_method: "put".into(),
            message_body: Some("hi".into()),
            headers: Some("X-A=1,Content-Type=text/plain".into()),
            ..Default::default()
        };
        let j = build("p", &a).unwrap();
        assert_eq!(j.name, "projects/p/locations/local/jobs/nightly");
        let h = j.http_target.unwrap();
        assert_eq!(h.http_method.as_deref(), Some("PUT"));
        assert_eq!(h.body.as_deref(), Some("aGk="));
        assert_eq!(h.headers.get("X-A").map(String::as_str), Some("1"));
        let bad = ScheduleArgs {
            schedule: "* * *".into(),
            ..a.clone()
        };
        assert!(build("p", &bad).is_err());
        let job = ScheduleArgs {
            uri: None,
            job: Some("batch".into()),
            ..a
        };
        assert_eq!(
            build("p", &job).unwrap().run_job_target.unwrap().job,
            "batch"
        );
    }
}
