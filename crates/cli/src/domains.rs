//! `skiff domain-mappings ...`: custom domains routed to services (gcloud beta run
//! domain-mappings' flags and output) over Cloud Run's v1 API
//! (`/apis/domains.cloudrun.com/v1/namespaces/P/domainmappings`).

use crate::api::{encode, Api};
use crate::output::{key_values, or_dash, print_machine, print_table, ListFormat};
use anyhow::{bail, Result};
use reqwest::Method;
use serde_json::{json, Value};

/// `--format` for `domain-mappings describe`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingFormat {
    Json,
    Yaml,
    /// The DomainMapping without status or server-set metadata
    Export,
}

#[derive(clap::Subcommand, Debug)]
pub enum DomainMappingsCommand {
    /// Map a domain to a service; prints the DNS records to create
    Create {
        /// The service requests to the domain go to
        #[arg(long, value_name = "SERVICE")]
        service: String,
        /// The domain, like www.example.com
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Map the domain even if it is already mapped to another service
        #[arg(long)]
        force_override: bool,
        /// AUTOMATIC (a certificate is provisioned, the default) or NONE (HTTP only)
        #[arg(long, value_name = "MODE", value_parser = ["AUTOMATIC", "NONE"])]
        certificate_mode: Option<String>,
    },
    /// List the project's domain mappings
    List {
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show one domain mapping: its conditions and DNS records
    Describe {
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<MappingFormat>,
    },
    /// Unmap a domain
    Delete {
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
    },
}

fn path(api: &Api, domain: Option<&str>) -> String {
    let mut p = format!(
        "/apis/domains.cloudrun.com/v1/namespaces/{}/domainmappings",
        encode(&api.project)
    );
    if let Some(d) = domain {
        p.push('/');
        p.push_str(&encode(d));
    }
    p
}

/// Checks `--domain` without the server.
pub fn precheck(cmd: &DomainMappingsCommand) -> Result<()> {
    let domain = match cmd {
        DomainMappingsCommand::Create { domain, .. }
        | DomainMappingsCommand::Describe { domain, .. }
        | DomainMappingsCommand::Delete { domain } => domain,
        DomainMappingsCommand::List { .. } => return Ok(()),
    };
    if let Err(e) = skiff_domains::mapping::validate_domain(domain) {
        bail!("--domain{}", e.trim_start_matches("metadata.name"));
    }
    Ok(())
}

/// The DomainMapping the create flags describe.
pub fn build(service: &str, domain: &str, force: bool, mode: Option<&str>) -> Value {
    let mut spec = json!({"routeName": service});
    if force {
        spec["forceOverride"] = json!(true);
    }
    if let Some(m) = mode {
        spec["certificateMode"] = json!(m);
    }
    json!({
        "apiVersion": skiff_domains::mapping::API_VERSION,
        "kind": skiff_domains::mapping::KIND,
        "metadata": {"name": domain},
        "spec": spec,
    })
}

/// The `NAME  RECORD TYPE  CONTENTS` rows of a mapping's DNS records.
fn record_rows(m: &Value) -> Vec<Vec<String>> {
    m["status"]["resourceRecords"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                r["name"].as_str().unwrap_or_default().to_string(),
                r["type"].as_str().unwrap_or_default().to_string(),
                r["rrdata"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect()
}

fn condition<'a>(m: &'a Value, t: &str) -> Option<&'a Value> {
    m["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
}

/// A condition as describe shows it: `True`, or `Unknown`/`False` with its reason and message.
fn condition_text(m: &Value, t: &str) -> String {
    match condition(m, t) {
        None => "-".into(),
        Some(c) => {
            let status = c["status"].as_str().unwrap_or("Unknown");
            match (c["reason"].as_str(), c["message"].as_str()) {
                (_, _) if status == "True" => status.to_string(),
                (Some(r), Some(msg)) => format!("{status} ({r}): {msg}"),
                (Some(r), None) => format!("{status} ({r})"),
                (None, Some(msg)) => format!("{status}: {msg}"),
                (None, None) => status.to_string(),
            }
        }
    }
}

/// The mapping without status and server-set metadata.
pub fn export(m: &Value) -> Value {
    crate::services::export(m)
}

pub fn run(api: &Api, cmd: DomainMappingsCommand) -> Result<()> {
    match cmd {
        DomainMappingsCommand::Create {
            service,
            domain,
            force_override,
            certificate_mode,
        } => {
            let body = build(
                &service,
                &domain,
                force_override,
                certificate_mode.as_deref(),
            );
            let m: Value = api.send_json(Method::POST, &path(api, None), &body)?;
            eprintln!("Mapped [{domain}] to service [{service}]. Create these DNS records:");
            print_table(&["NAME", "RECORD TYPE", "CONTENTS"], &record_rows(&m));
            if let Some(c) = condition(&m, "Ready").filter(|c| c["status"] != "True") {
                if let Some(msg) = c["message"].as_str() {
                    eprintln!("{msg}");
                }
            }
            Ok(())
        }
        DomainMappingsCommand::List { format } => {
            let v: Value = api.get(&path(api, None), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        m["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        m["spec"]["routeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        or_dash(m["status"]["url"].as_str()),
                        or_dash(condition(m, "Ready").and_then(|c| c["status"].as_str())),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("Listed 0 items.");
                return Ok(());
            }
            print_table(&["DOMAIN", "SERVICE", "URL", "READY"], &rows);
            Ok(())
        }
        DomainMappingsCommand::Describe { domain, format } => {
            let m: Value = api.get(&path(api, Some(&domain)), &[])?;
            match format {
                Some(MappingFormat::Json) => return print_machine(&m, false),
                Some(MappingFormat::Yaml) => return print_machine(&m, true),
                Some(MappingFormat::Export) => return print_machine(&export(&m), true),
                None => {}
            }
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let records: Vec<String> = record_rows(&m).into_iter().map(|r| r.join(" ")).collect();
            print!(
                "{}",
                key_values(&[
                    ("domain", s(&m["metadata"]["name"])),
                    ("service", s(&m["spec"]["routeName"])),
                    ("certificateMode", s(&m["spec"]["certificateMode"])),
                    ("url", or_dash(m["status"]["url"].as_str())),
                    ("ready", condition_text(&m, "Ready")),
                    ("domainRoutable", condition_text(&m, "DomainRoutable")),
                    (
                        "certificateProvisioned",
                        condition_text(&m, "CertificateProvisioned")
                    ),
                    ("dnsRecords", records.join(", ")),
                    ("created", s(&m["metadata"]["creationTimestamp"])),
                ])
            );
            Ok(())
        }
        DomainMappingsCommand::Delete { domain } => {
            api.delete(&path(api, Some(&domain)))?;
            eprintln!("Mappings to [{domain}] now have been deleted.");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            build("hello", "www.example.com", false, None),
            json!({"apiVersion": "domains.cloudrun.com/v1", "kind": "DomainMapping",
                   "metadata": {"name": "www.example.com"}, "spec": {"routeName": "hello"}})
        );
        assert_eq!(
            build("hello", "a.example.com", true, Some("NONE"))["spec"],
            json!({"routeName": "hello", "forceOverride": true, "certificateMode": "NONE"})
        );
    }

    #[test]
    fn prechecks() {
        let e = precheck(&DomainMappingsCommand::Delete {
            domain: "Bad_Domain".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--domain: \"Bad_Domain\" is not a valid domain name"),
            "{e}"
        );
        assert!(precheck(&DomainMappingsCommand::Delete {
            domain: "www.example.com".into()
        })
        .is_ok());
    }

    #[test]
    fn conditions_and_records() {
        let m = json!({"status": {
            "conditions": [
                {"type": "Ready", "status": "Unknown", "reason": "CertificatePending", "message": "waiting"},
                {"type": "DomainRoutable", "status": "True"},
            ],
            "resourceRecords": [{"name": "www.example.com", "type": "A", "rrdata": "203.0.113.7"}],
        }});
        assert_eq!(
            condition_text(&m, "Ready"),
            "Unknown (CertificatePending): waiting"
        );
        assert_eq!(condition_text(&m, "DomainRoutable"), "True");
        assert_eq!(condition_text(&m, "CertificateProvisioned"), "-");
        assert_eq!(
            record_rows(&m),
            [vec!["www.example.com", "A", "203.0.113.7"]]
        );
    }
}
