//! `skiff triggers ...`: Eventarc-style triggers (gcloud eventarc triggers' flags) over the
//! Eventarc v1 API (`/v1/projects/P/locations/L/triggers`).

use crate::api::{encode, Api};
use crate::output::{key_values, or_dash, print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Result};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct CreateArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The Cloud Run service events go to
    #[arg(
        long,
        value_name = "SERVICE",
        required_unless_present = "destination_run_job",
        conflicts_with = "destination_run_job"
    )]
    pub destination_run_service: Option<String>,
    /// The Cloud Run job each event starts an execution of (a Skiff extension: the event
    /// reaches every task as CE_* environment variables and CE_DATA)
    #[arg(long, value_name = "JOB")]
    pub destination_run_job: Option<String>,
    /// The path on the service events are POSTed to (default /)
    #[arg(long, value_name = "PATH", conflicts_with = "destination_run_job")]
    pub destination_run_path: Option<String>,
    /// Event filters: ATTRIBUTE=VALUE,... (repeatable); one must be type=EVENT_TYPE
    #[arg(long, value_name = "ATTRIBUTE=VALUE,...", required = true)]
    pub event_filters: Vec<String>,
    /// The Pub/Sub topic events travel on (projects/P/topics/T or T); default: a new one
    #[arg(long, value_name = "TOPIC")]
    pub transport_topic: Option<String>,
    /// The service account whose identity token deliveries carry (default: the project's
    /// Compute Engine default service account)
    #[arg(long, value_name = "EMAIL")]
    pub service_account: Option<String>,
    /// Labels: K=V,...
    #[arg(long, value_name = "K=V,...")]
    pub labels: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum TriggersCommand {
    /// Create a trigger
    Create {
        #[command(flatten)]
        args: CreateArgs,
        /// The trigger's location
        #[arg(long, default_value = skiff_model::REGION)]
        location: String,
    },
    /// List triggers
    List {
        #[arg(long, default_value = skiff_model::REGION)]
        location: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a trigger
    Describe {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, default_value = skiff_model::REGION)]
        location: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a trigger and its subscription
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, default_value = skiff_model::REGION)]
        location: String,
    },
}

fn path(api: &Api, location: &str, name: Option<&str>) -> String {
    let mut p = format!(
        "/v1/projects/{}/locations/{}/triggers",
        encode(&api.project),
        encode(location)
    );
    if let Some(n) = name {
        p.push('/');
        p.push_str(&encode(n));
    }
    p
}

/// The `eventFilters` of `--event-filters` values (each `ATTRIBUTE=VALUE[,...]`).
pub fn parse_filters(values: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for v in values {
        for item in v.split(',').filter(|s| !s.trim().is_empty()) {
            let (k, val) = item.split_once('=').ok_or_else(|| {
                anyhow!("invalid --event-filters item {item:?}: use ATTRIBUTE=VALUE, like type=google.cloud.pubsub.topic.v1.messagePublished")
            })?;
            if k.trim().is_empty() || val.trim().is_empty() {
                bail!("invalid --event-filters item {item:?}: use ATTRIBUTE=VALUE with both parts");
            }
            out.push(json!({"attribute": k.trim(), "value": val.trim()}));
        }
    }
    Ok(out)
}

/// A trigger's destination as the CLI shows it: the service's name, or `job/JOB`.
fn destination(t: &Value) -> String {
    match t["destination"]["cloudRunJob"]["job"].as_str() {
        Some(job) => format!("job/{job}"),
        None => t["destination"]["cloudRun"]["service"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The Trigger JSON the flags describe.
pub fn build(a: &CreateArgs) -> Result<Value> {
    let destination = match (&a.destination_run_service, &a.destination_run_job) {
        (_, Some(job)) => json!({"cloudRunJob": {"job": job}}),
        (service, None) => {
            let mut run = json!({"service": service.clone().unwrap_or_default()});
            if let Some(p) = &a.destination_run_path {
                run["path"] = json!(p);
            }
            json!({"cloudRun": run})
        }
    };
    let mut t = json!({
        "eventFilters": parse_filters(&a.event_filters)?,
        "destination": destination,
    });
    if let Some(topic) = &a.transport_topic {
        t["transport"] = json!({"pubsub": {"topic": topic}});
    }
    if let Some(sa) = &a.service_account {
        t["serviceAccount"] = json!(sa);
    }
    if let Some(l) = &a.labels {
        let mut labels = serde_json::Map::new();
        for item in crate::deploy::split_list(l) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid label {item:?}: use KEY=VALUE"))?;
            labels.insert(k.trim().to_string(), json!(v));
        }
        t["labels"] = Value::Object(labels);
    }
    Ok(t)
}

/// Checks the flags without the server.
pub fn precheck(cmd: &TriggersCommand) -> Result<()> {
    if let TriggersCommand::Create { args, .. } = cmd {
        build(args)?;
    }
    Ok(())
}

fn last(s: &str) -> String {
    s.rsplit('/').next().unwrap_or_default().to_string()
}

fn event_type(t: &Value) -> String {
    t["eventFilters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["attribute"] == "type")
        .and_then(|f| f["value"].as_str())
        .unwrap_or_default()
        .to_string()
}

pub fn run(api: &Api, cmd: TriggersCommand) -> Result<()> {
    match cmd {
        TriggersCommand::Create { args, location } => {
            let body = build(&args)?;
            let p = format!(
                "{}?triggerId={}",
                path(api, &location, None),
                encode(&args.name)
            );
            let op: Value = api.send_json(Method::POST, &p, &body)?;
            let sub = op["response"]["transport"]["pubsub"]["subscription"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "Created trigger [{}] (subscription {}).",
                args.name,
                or_dash(Some(&sub).filter(|s| !s.is_empty()).map(|s| s.as_str()))
            );
            Ok(())
        }
        TriggersCommand::List { location, format } => {
            let v: Value = api.get(&path(api, &location, None), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = v["triggers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        last(t["name"].as_str().unwrap_or_default()),
                        event_type(t),
                        destination(t),
                        t["transport"]["pubsub"]["topic"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("Listed 0 items.");
                return Ok(());
            }
            print_table(&["NAME", "TYPE", "DESTINATION", "TOPIC"], &rows);
            Ok(())
        }
        TriggersCommand::Describe {
            name,
            location,
            format,
        } => {
            let t: Value = api.get(&path(api, &location, Some(&name)), &[])?;
            if let Some(f) = format {
                return print_machine(&t, f == DescribeFormat::Yaml);
            }
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let filters: Vec<String> = t["eventFilters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| format!("{}={}", s(&f["attribute"]), s(&f["value"])))
                .collect();
            print!(
                "{}",
                key_values(&[
                    ("name", s(&t["name"])),
                    ("eventFilters", filters.join(",")),
                    ("destination", destination(&t)),
                    (
                        "path",
                        or_dash(t["destination"]["cloudRun"]["path"].as_str())
                    ),
                    ("serviceAccount", s(&t["serviceAccount"])),
                    ("topic", s(&t["transport"]["pubsub"]["topic"])),
                    ("subscription", s(&t["transport"]["pubsub"]["subscription"])),
                    ("created", s(&t["createTime"])),
                ])
            );
            Ok(())
        }
        TriggersCommand::Delete { name, location } => {
            let _: Value = api.send_json(
                Method::DELETE,
                &path(api, &location, Some(&name)),
                &json!({}),
            )?;
            eprintln!("Deleted trigger [{name}].");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = parse_filters(&[
            "type=a.b,serviceName=run.googleapis.com".into(),
            "x=y".into(),
        ])
        .unwrap();
        assert_eq!(
            f,
            [
                json!({"attribute": "type", "value": "a.b"}),
                json!({"attribute": "serviceName", "value": "run.googleapis.com"}),
                json!({"attribute": "x", "value": "y"}),
            ]
        );
        assert!(parse_filters(&["type".into()]).is_err());
        assert!(parse_filters(&["type=".into()]).is_err());
    }
}
