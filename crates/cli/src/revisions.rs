//! `skiff revisions ...`: list (with whether each revision serves traffic), describe, delete.

use crate::api::Api;
use crate::output::{key_values, or_dash, print_machine, print_table, DescribeFormat, ListFormat};
use crate::services::{items, settings_pairs};
use anyhow::{anyhow, Result};
use serde_json::Value;
use skiff_model::{Revision, RevisionTemplate, Service, LABEL_SERVICE};
use std::collections::BTreeSet;

#[derive(clap::Subcommand, Debug)]
pub enum RevisionsCommand {
    /// List revisions, newest first per service
    List {
        /// Only the revisions of this service
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show one revision
    Describe {
        #[arg(value_name = "REVISION")]
        revision: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a revision that serves no traffic
    Delete {
        #[arg(value_name = "REVISION")]
        revision: String,
    },
}

pub fn run(api: &Api, cmd: RevisionsCommand) -> Result<()> {
    match cmd {
        RevisionsCommand::List { service, format } => list(api, service.as_deref(), format),
        RevisionsCommand::Describe { revision, format } => {
            let v: Value = api.get(&api.knative("revisions", Some(&revision)), &[])?;
            match format {
                Some(f) => print_machine(&v, f == DescribeFormat::Yaml),
                None => {
                    let rev: Revision = serde_json::from_value(v)
                        .map_err(|e| anyhow!("unexpected revision from the Skiff API: {e}"))?;
                    print!("{}", describe_text(&rev));
                    Ok(())
                }
            }
        }
        RevisionsCommand::Delete { revision } => {
            api.delete(&api.knative("revisions", Some(&revision)))?;
            eprintln!("Deleted revision [{revision}].");
            Ok(())
        }
    }
}

/// Names of the revisions that get a share of some service's traffic.
pub fn serving_revisions(services: &[Service]) -> BTreeSet<String> {
    services
        .iter()
        .filter_map(|s| s.status.as_ref())
        .flat_map(|st| st.traffic.iter())
        .filter(|t| t.percent.unwrap_or(0) > 0)
        .filter_map(|t| t.revision_name.clone())
        .collect()
}

pub fn revision_rows(revs: &[Revision], serving: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut revs: Vec<&Revision> = revs.iter().collect();
    let service = |r: &Revision| r.metadata.labels.get(LABEL_SERVICE).cloned();
    revs.sort_by(|a, b| {
        service(a)
            .cmp(&service(b))
            .then(b.metadata.name.cmp(&a.metadata.name))
    });
    revs.into_iter()
        .map(|r| {
            vec![
                r.metadata.name.clone(),
                or_dash(service(r).as_deref()),
                if serving.contains(&r.metadata.name) {
                    "yes".into()
                } else {
                    "no".into()
                },
                or_dash(r.metadata.creation_timestamp.as_deref()),
            ]
        })
        .collect()
}

fn list(api: &Api, service: Option<&str>, format: Option<ListFormat>) -> Result<()> {
    let selector = service.map(|s| format!("{LABEL_SERVICE}={s}"));
    let query: Vec<(&str, &str)> = selector
        .as_deref()
        .map(|s| vec![("labelSelector", s)])
        .unwrap_or_default();
    let v: Value = api.get(&api.knative("revisions", None), &query)?;
    if let Some(f) = format {
        return print_machine(&v, f == ListFormat::Yaml);
    }
    let revs: Vec<Revision> = items(&v)?;
    let services: Vec<Service> = match service {
        Some(s) => api
            .get_opt::<Service>(&api.knative("services", Some(s)))?
            .into_iter()
            .collect(),
        None => items(&api.get::<Value>(&api.knative("services", None), &[])?)?,
    };
    print_table(
        &["REVISION", "SERVICE", "ACTIVE", "CREATED"],
        &revision_rows(&revs, &serving_revisions(&services)),
    );
    Ok(())
}

pub fn describe_text(rev: &Revision) -> String {
    let st = rev.status.clone().unwrap_or_default();
    let ready = crate::output::ready_text(&st.conditions);
    let mut pairs: Vec<(&str, String)> = vec![
        ("Revision", rev.metadata.name.clone()),
        (
            "Service",
            or_dash(rev.metadata.labels.get(LABEL_SERVICE).map(String::as_str)),
        ),
        ("Project", rev.metadata.namespace.clone()),
        ("Ready", ready),
        (
            "Created",
            or_dash(rev.metadata.creation_timestamp.as_deref()),
        ),
        ("Image digest", or_dash(st.image_digest.as_deref())),
    ];
    let t = RevisionTemplate {
        metadata: rev.metadata.clone(),
        spec: rev.spec.clone(),
    };
    pairs.extend(settings_pairs(&t));
    key_values(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table;
    use serde_json::json;

    fn rev(name: &str, svc: &str, created: &str) -> Revision {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {LABEL_SERVICE: svc},
                         "creationTimestamp": created},
            "spec": {"containers": [{"image": "busybox"}]}
        }))
        .unwrap()
    }

    #[test]
    fn rows() {
        let svcs: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "a"}, "status": {"traffic": [
                {"revisionName": "a-00002-x", "percent": 100},
                {"revisionName": "a-00001-y", "percent": 0, "tag": "old"}]}},
            {"metadata": {"name": "b"}}
        ]))
        .unwrap();
        let serving = serving_revisions(&svcs);
        assert_eq!(serving.iter().collect::<Vec<_>>(), vec!["a-00002-x"]);
        let revs = [
            rev("b-00001-q", "b", "2024-01-03T00:00:00Z"),
            rev("a-00001-y", "a", "2024-01-01T00:00:00Z"),
            rev("a-00002-x", "a", "2024-01-02T00:00:00Z"),
        ];
        assert_eq!(
            table(
                &["REVISION", "SERVICE", "ACTIVE", "CREATED"],
                &revision_rows(&revs, &serving)
            ),
            "REVISION   SERVICE  ACTIVE  CREATED\n\
             a-00002-x  a        yes     2024-01-02T00:00:00Z\n\
             a-00001-y  a        no      2024-01-01T00:00:00Z\n\
             b-00001-q  b        no      2024-01-03T00:00:00Z\n"
        );
    }

    #[test]
    fn describes() {
        let text = describe_text(&rev("a-00001-y", "a", "2024-01-01T00:00:00Z"));
        for part in [
            "Revision:       a-00001-y\n",
            "Service:        a\n",
            "Image:          busybox\n",
            "Image digest:   -\n",
        ] {
            assert!(text.contains(part), "{text} lacks {part:?}");
        }
    }
}
