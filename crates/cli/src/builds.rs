//! `skiff builds submit|list|describe|log|cancel` (gcloud's `builds` shape), and the upload
//! and log streaming `skiff deploy --source` shares.
//!
//! A source directory is packed on the client (`skiff_build::source::pack`, honouring
//! `.gcloudignore`), streamed to `POST /skiff/v1/namespaces/NS/builds`, and the build's log is
//! printed to stderr as the server streams it.

use crate::api::{encode, Api};
use crate::output::{key_values, or_dash, print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use skiff_build::{Build, BuildStatus};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum BuildsCommand {
    /// Build a source directory (its Dockerfile, or a detected language) into an image
    Submit {
        /// The source directory
        #[arg(value_name = "DIR", default_value = ".")]
        source: PathBuf,
        /// The image to store the result as, NAME[:TAG]
        #[arg(long, value_name = "NAME[:TAG]")]
        tag: String,
        #[command(flatten)]
        opts: SourceOptions,
    },
    /// List builds, newest first
    List {
        /// Only the builds of this service
        #[arg(long, value_name = "SERVICE", conflicts_with = "job")]
        service: Option<String>,
        /// Only the builds of this job
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a build: status, source digest, plan, timing, image
    Describe {
        #[arg(value_name = "BUILD")]
        id: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Print a build's log
    Log {
        #[arg(value_name = "BUILD")]
        id: String,
    },
    /// Cancel a queued or running build
    Cancel {
        #[arg(value_name = "BUILD")]
        id: String,
    },
}

/// Build options `builds submit` and `deploy --source` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceOptions {
    /// Build arguments (Dockerfile ARGs) and, for a detected language, build environment
    /// variables such as GOOGLE_ENTRYPOINT and GOOGLE_RUNTIME_VERSION: KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub set_build_env_vars: Option<String>,
    /// The base image for a detected language (no Dockerfile) [default: the server's]
    #[arg(long, value_name = "REF")]
    pub base_image: Option<String>,
    /// The build's time limit, e.g. 20m [default: the server's, 10m]
    #[arg(long, value_name = "DURATION")]
    pub build_timeout: Option<String>,
}

impl SourceOptions {
    /// Checks the flags' syntax without the server.
    pub fn check(&self) -> Result<()> {
        if let Some(s) = &self.set_build_env_vars {
            skiff_model::parse_env_list(s)
                .map_err(|e| anyhow!("invalid --set-build-env-vars: {}", e.0))?;
        }
        if let Some(t) = &self.build_timeout {
            skiff_model::parse_duration(t)
                .map_err(|e| anyhow!("invalid --build-timeout: {}", e.0))?;
        }
        Ok(())
    }
}

/// What a build is for: it names the built image.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `deploy SERVICE --source`: `NS/cloud-run-source-deploy/SERVICE:ID`.
    Service(&'a str),
    /// `jobs deploy JOB --source`: `NS/cloud-run-source-deploy/JOB:ID`.
    Job(&'a str),
    /// `builds submit --tag NAME[:TAG]`.
    Image(&'a str),
}

/// Packs `dir`, uploads it as a build for `target`, prints its log to stderr as it runs, and
/// returns the build as it ended. A build that did not succeed is an error naming its status
/// and what to do.
pub fn submit(api: &Api, dir: &Path, target: Target, opts: &SourceOptions) -> Result<Build> {
    opts.check()?;
    let mut archive = tempfile::tempfile().context("cannot create a temporary file")?;
    let packed = skiff_build::source::pack(dir, &mut archive).map_err(|e| anyhow!("{e}"))?;
    eprintln!(
        "Uploading {} file(s) from {} ({}, ignoring what {} names)...",
        packed.files,
        dir.display(),
        crate::output::human_size(packed.bytes),
        skiff_build::source::ignore_file(dir)
    );
    use std::io::Seek;
    archive.rewind().context("cannot read the packed source")?;
    let mut query: Vec<(&str, &str)> = vec![match target {
        Target::Service(s) => ("service", s),
        Target::Job(j) => ("job", j),
        Target::Image(i) => ("image", i),
    }];
    if let Some(a) = &opts.set_build_env_vars {
        query.push(("buildArgs", a));
    }
    if let Some(b) = &opts.base_image {
        query.push(("baseImage", b));
    }
    if let Some(t) = &opts.build_timeout {
        query.push(("timeout", t));
    }
    let req = api
        .request(Method::POST, &api.skiff_ns("builds"))
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(reqwest::blocking::Body::sized(archive, packed.bytes));
    let resp = api.send(req)?;
    let mut last: Option<Build> = None;
    let mut tail: Vec<String> = Vec::new();
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.map_err(|e| anyhow!("the build's log stream broke: {e}"))?;
        let v: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let Some(l) = v["log"].as_str() {
            eprintln!("{l}");
            tail.push(l.to_string());
        } else if v.get("build").is_some() {
            let b: Build = serde_json::from_value(v["build"].clone())
                .map_err(|e| anyhow!("unexpected build from the Skiff API: {e}"))?;
            if last.is_none() {
                eprintln!("Build {} started.", b.id);
            }
            last = Some(b);
        } else if let Some(e) = v["error"].as_str() {
            bail!("{e}");
        }
    }
    let b = last.ok_or_else(|| anyhow!("the Skiff API sent no build"))?;
    match b.status {
        BuildStatus::Success => {
            if let Some(same) = same_as_before(api, &b) {
                eprintln!(
                    "The image is the same as build {same}'s: same source, same base, same digest."
                );
            }
            Ok(b)
        }
        BuildStatus::Queued | BuildStatus::Working => bail!(
            "the connection ended before build {} did: follow it with `skiff builds describe {}`",
            b.id,
            b.id
        ),
        status => bail!(
            "build {} ended {}: {} (the log above; again with `skiff builds log {}`)",
            b.id,
            serde_json::to_value(status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            b.status_detail.as_deref().unwrap_or("no detail"),
            b.id
        ),
    }
}

/// The id of the latest earlier successful build (of the same service or job, or to the same
/// image name) that made an image with the digest `b` made, if any.
fn same_as_before(api: &Api, b: &Build) -> Option<String> {
    let digest = &b.results.as_ref()?.images.first()?.digest;
    let query: Vec<(&str, &str)> = match (&b.service, &b.job) {
        (Some(s), _) => vec![("service", s.as_str())],
        (None, Some(j)) => vec![("job", j.as_str())],
        (None, None) => Vec::new(),
    };
    let v: serde_json::Value = api.get(&api.skiff_ns("builds"), &query).ok()?;
    let list: Vec<Build> = serde_json::from_value(v["builds"].clone()).ok()?;
    list.into_iter()
        .filter(|o| {
            o.id != b.id
                && o.status == BuildStatus::Success
                && (b.service.is_some() || b.job.is_some() || o.images == b.images)
        })
        .find(|o| {
            o.results
                .as_ref()
                .and_then(|r| r.images.first())
                .is_some_and(|i| &i.digest == digest)
        })
        .map(|o| o.id)
}

/// `SERVICE`, `job/JOB` or `-`: what a build was for, in a table.
fn target_name(b: &Build) -> String {
    match (&b.service, &b.job) {
        (Some(s), _) => s.clone(),
        (None, Some(j)) => format!("job/{j}"),
        (None, None) => "-".into(),
    }
}

fn status_name(s: BuildStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Seconds between two RFC 3339 times, as `12.3s`.
fn duration(b: &Build) -> String {
    let parse = |t: &Option<String>| {
        t.as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (parse(&b.start_time), parse(&b.finish_time)) {
        (Some(s), Some(f)) => format!("{:.1}s", (f - s).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    }
}

pub fn rows(list: &[Build]) -> Vec<Vec<String>> {
    list.iter()
        .map(|b| {
            vec![
                b.id.clone(),
                status_name(b.status),
                target_name(b),
                b.images.first().cloned().unwrap_or_default(),
                b.create_time.clone(),
                duration(b),
            ]
        })
        .collect()
}

pub fn run(api: &Api, cmd: BuildsCommand) -> Result<()> {
    match cmd {
        BuildsCommand::Submit { source, tag, opts } => {
            let b = submit(api, &source, Target::Image(&tag), &opts)?;
            for i in b.results.map(|r| r.images).unwrap_or_default() {
                println!("{}@{}", i.name, i.digest);
            }
            Ok(())
        }
        BuildsCommand::List {
            service,
            job,
            format,
        } => {
            let mut query: Vec<(&str, &str)> = Vec::new();
            if let Some(s) = &service {
                query.push(("service", s));
            }
            if let Some(j) = &job {
                query.push(("job", j));
            }
            let v: serde_json::Value = api.get(&api.skiff_ns("builds"), &query)?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let list: Vec<Build> = serde_json::from_value(v["builds"].clone())
                .map_err(|e| anyhow!("unexpected build list from the Skiff API: {e}"))?;
            print_table(
                &["ID", "STATUS", "FOR", "IMAGE", "CREATED", "DURATION"],
                &rows(&list),
            );
            Ok(())
        }
        BuildsCommand::Describe { id, format } => {
            let v: serde_json::Value =
                api.get(&api.skiff_ns(&format!("builds/{}", encode(&id))), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == DescribeFormat::Yaml);
            }
            let b: Build = serde_json::from_value(v)
                .map_err(|e| anyhow!("unexpected build from the Skiff API: {e}"))?;
            let images = b
                .results
                .as_ref()
                .map(|r| {
                    r.images
                        .iter()
                        .map(|i| format!("{}@{}", i.name, i.digest))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| b.images.join(", "));
            print!(
                "{}",
                key_values(&[
                    ("id", b.id.clone()),
                    ("status", status_name(b.status)),
                    ("detail", or_dash(b.status_detail.as_deref())),
                    ("for", target_name(&b)),
                    (
                        "source",
                        format!("{} ({} bytes)", b.source.digest, b.source.bytes)
                    ),
                    (
                        "plan",
                        b.plan
                            .as_ref()
                            .map(|p| match (&p.dockerfile, &p.base_image) {
                                (Some(d), _) => format!("{} ({d})", p.kind),
                                (None, Some(base)) => format!("{} on {base}", p.kind),
                                _ => p.kind.clone(),
                            })
                            .unwrap_or_else(|| "-".into())
                    ),
                    ("images", images),
                    ("created", b.create_time.clone()),
                    ("started", or_dash(b.start_time.as_deref())),
                    ("finished", or_dash(b.finish_time.as_deref())),
                    ("duration", duration(&b)),
                    ("timeout", b.timeout.clone()),
                ])
            );
            Ok(())
        }
        BuildsCommand::Log { id } => {
            let resp = api.send(api.request(
                Method::GET,
                &api.skiff_ns(&format!("builds/{}/log", encode(&id))),
            ))?;
            let text = resp
                .text()
                .map_err(|e| anyhow!("cannot read the build's log: {e}"))?;
            print!("{text}");
            Ok(())
        }
        BuildsCommand::Cancel { id } => {
            let b: Build = api.send_json(
                Method::POST,
                &api.skiff_ns(&format!("builds/{}:cancel", encode(&id))),
                &serde_json::json!({}),
            )?;
            if b.status.is_final() {
                eprintln!(
                    "Build {} has already ended {}.",
                    b.id,
                    status_name(b.status)
                );
                return Ok(());
            }
            eprintln!("Cancelling build {}...", b.id);
            let path = api.skiff_ns(&format!("builds/{}", encode(&id)));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let b: Build = api.get(&path, &[])?;
                if b.status.is_final() {
                    eprintln!("Build {} ended {}.", b.id, status_name(b.status));
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "build {} has not stopped yet: check it with `skiff builds describe {}`",
                        b.id,
                        b.id
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}
