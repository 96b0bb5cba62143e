//! `skiff services ...`: list, describe (human, JSON, YAML, or an export that `replace`
//! accepts), delete, replace from a Knative Service file, and update-traffic.

use crate::api::{encode, Api};
use crate::deploy::{current_revision, deployed_lines, wait_ready};
use crate::output::{key_values, or_dash, print_machine, print_table, table, ListFormat};
use crate::traffic::{edit_traffic, parse_names, parse_percents, parse_tag_updates, TrafficEdit};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::Value;
use skiff_model::{
    format_duration, parse_duration, validate_name, validate_namespace, validate_service_name,
    validate_tag, Container, Policy, Resources, RevisionSettings, RevisionTemplate, Service,
    TrafficTarget, ANN_CPU_THROTTLING, ANN_MAX_SCALE, ANN_MIN_SCALE, SERVING_API_VERSION,
};
use std::borrow::Cow;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// `--format` for `services describe`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceFormat {
    Json,
    Yaml,
    /// A Knative Service without status or server-set metadata, for `services replace`
    Export,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServicesCommand {
    /// List the project's services
    List {
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show one service
    Describe {
        #[arg(value_name = "SERVICE")]
        service: String,
        /// json, yaml, or export (a Knative Service that `services replace` accepts)
        #[arg(long, value_name = "FORMAT")]
        format: Option<ServiceFormat>,
    },
    /// Delete a service with its revisions
    Delete {
        #[arg(value_name = "SERVICE")]
        service: String,
    },
    /// Create or replace a service from a Knative Service YAML or JSON file (`-` for stdin)
    Replace {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Move traffic between revisions and manage tags
    UpdateTraffic(UpdateTrafficArgs),
    /// Grant a role on the service to a member (e.g. `--member
    /// serviceAccount:caller@demo.iam.gserviceaccount.com --role roles/run.invoker`)
    AddIamPolicyBinding(IamBindingArgs),
    /// Take a role on the service back from a member
    RemoveIamPolicyBinding(IamBindingArgs),
    /// Show the service's IAM policy
    GetIamPolicy {
        #[arg(value_name = "SERVICE")]
        service: String,
        /// json or yaml (the default)
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct IamBindingArgs {
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// `allUsers`, `allAuthenticatedUsers`, or `user:`, `serviceAccount:`, `group:`,
    /// `domain:` followed by an email or domain
    #[arg(long, value_name = "MEMBER")]
    pub member: String,
    /// The role, e.g. roles/run.invoker
    #[arg(long, value_name = "ROLE")]
    pub role: String,
}

/// Checks an IAM member the way IAM spells them.
fn validate_member(m: &str) -> Result<()> {
    if m == "allUsers" || m == "allAuthenticatedUsers" {
        return Ok(());
    }
    match m.split_once(':') {
        Some(("user" | "serviceAccount" | "group", email)) if email.contains('@') => Ok(()),
        Some(("domain", d)) if d.contains('.') => Ok(()),
        _ => bail!(
            "invalid --member {m:?}: use allUsers, allAuthenticatedUsers, or user:EMAIL, serviceAccount:EMAIL, group:EMAIL, domain:DOMAIN"
        ),
    }
}

fn iam_base(api: &Api, service: &str) -> String {
    format!(
        "/v1/projects/{}/locations/local/services/{}",
        encode(&api.project),
        encode(service)
    )
}

fn change_binding(api: &Api, a: &IamBindingArgs, add: bool) -> Result<()> {
    change_policy_binding(
        api,
        &iam_base(api, &a.service),
        &format!("service [{}]", a.service),
        &a.member,
        &a.role,
        add,
    )
}

/// Adds (`add`) or removes `member`'s `role` in the IAM policy of the resource at API path
/// `base` (read with `{base}:getIamPolicy`, written with `{base}:setIamPolicy` and its etag),
/// then prints the new policy; `what` names the resource in messages ("service hello").
pub(crate) fn change_policy_binding(
    api: &Api,
    base: &str,
    what: &str,
    member: &str,
    role: &str,
    add: bool,
) -> Result<()> {
    validate_member(member)?;
    if !role.starts_with("roles/") {
        bail!("invalid --role {role:?}: give a role's full name, starting with roles/ (like roles/run.invoker or roles/pubsub.publisher)");
    }
    let mut policy: Policy = api.get(&format!("{base}:getIamPolicy"), &[])?;
    let pos = policy.bindings.iter().position(|b| b.role == role);
    match (pos, add) {
        (Some(i), true) => {
            let b = &mut policy.bindings[i];
            if !b.members.iter().any(|m| m == member) {
                b.members.push(member.to_string());
            }
        }
        (None, true) => policy.bindings.push(skiff_model::Binding {
            role: role.to_string(),
            members: vec![member.to_string()],
        }),
        (Some(i), false) => {
            let b = &mut policy.bindings[i];
            let before = b.members.len();
            b.members.retain(|m| m != member);
            if b.members.len() == before {
                bail!("{member} does not hold {role} on {what}");
            }
            if b.members.is_empty() {
                policy.bindings.remove(i);
            }
        }
        (None, false) => bail!("{member} does not hold {role} on {what}"),
    }
    let updated: Policy = api.send_json(
        Method::POST,
        &format!("{base}:setIamPolicy"),
        &serde_json::json!({ "policy": policy }),
    )?;
    eprintln!("Updated IAM policy for {what}.");
    print!("{}", serde_yaml::to_string(&updated)?);
    Ok(())
}

fn get_iam_policy(api: &Api, service: &str, format: Option<ListFormat>) -> Result<()> {
    show_policy(api, &iam_base(api, service), format)
}

/// Prints the IAM policy of the resource at API path `base` (YAML, or JSON with
/// `--format json`).
pub(crate) fn show_policy(api: &Api, base: &str, format: Option<ListFormat>) -> Result<()> {
    let policy: Policy = api.get(&format!("{base}:getIamPolicy"), &[])?;
    match format {
        Some(ListFormat::Json) => println!("{}", serde_json::to_string_pretty(&policy)?),
        _ => print!("{}", serde_yaml::to_string(&policy)?),
    }
    Ok(())
}

#[derive(clap::Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["to_latest", "to_revisions", "to_tags", "update_tags", "remove_tags", "clear_tags"])
))]
pub struct UpdateTrafficArgs {
    #[arg(value_name = "SERVICE")]
    pub service: String,
    /// Send all traffic to the latest ready revision (and to each later one)
    #[arg(long, conflicts_with_all = ["to_revisions", "to_tags"])]
    pub to_latest: bool,
    /// Percent of traffic per revision; LATEST names the latest ready revision
    #[arg(long, value_name = "REVISION=PERCENT,...")]
    pub to_revisions: Option<String>,
    /// Percent of traffic per tagged revision
    #[arg(long, value_name = "TAG=PERCENT,...")]
    pub to_tags: Option<String>,
    /// Add or move tags
    #[arg(long, value_name = "TAG=REVISION,...")]
    pub update_tags: Option<String>,
    /// Remove tags
    #[arg(long, value_name = "TAG,...")]
    pub remove_tags: Option<String>,
    /// Remove every tag
    #[arg(long)]
    pub clear_tags: bool,
}

impl UpdateTrafficArgs {
    pub fn edit(&self) -> Result<TrafficEdit> {
        Ok(TrafficEdit {
            to_latest: self.to_latest,
            to_revisions: match &self.to_revisions {
                Some(s) => parse_percents(s, "--to-revisions")?,
                None => Vec::new(),
            },
            to_tags: match &self.to_tags {
                Some(s) => parse_percents(s, "--to-tags")?,
                None => Vec::new(),
            },
            update_tags: match &self.update_tags {
                Some(s) => parse_tag_updates(s)?,
                None => Vec::new(),
            },
            remove_tags: self
                .remove_tags
                .as_deref()
                .map(parse_names)
                .unwrap_or_default(),
            clear_tags: self.clear_tags,
        })
    }
}

pub fn run(api: &Api, cmd: ServicesCommand) -> Result<()> {
    match cmd {
        ServicesCommand::List { format } => list(api, format),
        ServicesCommand::Describe { service, format } => describe(api, &service, format),
        ServicesCommand::Delete { service } => {
            api.delete(&api.knative("services", Some(&service)))?;
            eprintln!("Deleted service [{service}].");
            Ok(())
        }
        ServicesCommand::Replace { file } => replace(api, &file),
        ServicesCommand::UpdateTraffic(args) => update_traffic(api, &args),
        ServicesCommand::AddIamPolicyBinding(a) => change_binding(api, &a, true),
        ServicesCommand::RemoveIamPolicyBinding(a) => change_binding(api, &a, false),
        ServicesCommand::GetIamPolicy { service, format } => get_iam_policy(api, &service, format),
    }
}

/// The `items` of a Kubernetes-style list answer.
pub fn items<T: serde::de::DeserializeOwned>(list: &Value) -> Result<Vec<T>> {
    match list.get("items") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| anyhow!("unexpected list from the Skiff API: {e}")),
    }
}

/// What the table of `services list` reads of a service. The list is parsed straight into
/// these, borrowing each string from the answer's text, so the rest of each object (its
/// template, traffic, annotations: most of 10 000 services' megabytes, when a server sends
/// them despite `fields`) is skipped over rather than built.
#[derive(serde::Deserialize)]
pub struct ServiceRow<'a> {
    #[serde(borrow)]
    metadata: RowMeta<'a>,
    #[serde(default, borrow)]
    status: Option<RowStatus<'a>>,
}

#[derive(serde::Deserialize)]
struct RowMeta<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RowStatus<'a> {
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    latest_ready_revision_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    latest_created_revision_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    conditions: Vec<RowCondition<'a>>,
}

#[derive(serde::Deserialize)]
struct RowCondition<'a> {
    #[serde(rename = "type", borrow)]
    type_: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

/// The `fields` mask of what [`ServiceRow`] reads.
const ROW_FIELDS: &str = skiff_model::SERVICE_TABLE_FIELDS;

/// A `ServiceList` as the table reads it.
#[derive(serde::Deserialize)]
struct ServiceRows<'a> {
    #[serde(default, borrow)]
    items: Vec<ServiceRow<'a>>,
}

/// The rows of `services list`: name, URL, latest revision (the latest ready one, else the
/// latest created), Ready; `-` for what a service lacks.
pub fn service_rows<'s>(services: &'s [ServiceRow<'_>]) -> Vec<[&'s str; 4]> {
    let dash = |s: Option<&'s str>| s.filter(|s| !s.is_empty()).unwrap_or("-");
    services
        .iter()
        .map(|s| {
            let st = s.status.as_ref();
            let revision = st.and_then(|st| {
                st.latest_ready_revision_name
                    .as_deref()
                    .or(st.latest_created_revision_name.as_deref())
            });
            let ready = st
                .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
                .map_or("Unknown", |c| c.status.as_ref());
            [
                s.metadata.name.as_ref(),
                dash(st.and_then(|st| st.url.as_deref())),
                dash(revision),
                ready,
            ]
        })
        .collect()
}

fn list(api: &Api, format: Option<ListFormat>) -> Result<()> {
    let path = api.knative("services", None);
    if let Some(f) = format {
        let v: Value = api.get(&path, &[])?;
        return print_machine(&v, f == ListFormat::Yaml);
    }
    // Only what the table shows (Google's `fields` system parameter): a third of the whole
    // list's bytes. A server that ignores `fields` sends everything, and serde skips the rest.
    let body = api.get_body(&path, &[("fields", ROW_FIELDS)])?;
    let mut services = serde_json::from_slice::<ServiceRows>(&body)
        .map_err(|e| anyhow!("unexpected answer from the Skiff API at {path}: {e}: is --api-url a Skiff server of the same version?"))?
        .items;
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    print_table(
        &["SERVICE", "URL", "LATEST-REVISION", "READY"],
        &service_rows(&services),
    );
    Ok(())
}

/// A Service as `services replace` takes it: no status, no metadata the server sets.
pub fn export(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "selfLink",
                "managedFields",
            ] {
                m.remove(k);
            }
        }
    }
    v
}

fn describe(api: &Api, name: &str, format: Option<ServiceFormat>) -> Result<()> {
    let v: Value = api.get(&api.knative("services", Some(name)), &[])?;
    match format {
        Some(ServiceFormat::Json) => print_machine(&v, false),
        Some(ServiceFormat::Yaml) => print_machine(&v, true),
        Some(ServiceFormat::Export) => print_machine(&export(&v), true),
        None => {
            let svc: Service = serde_json::from_value(v)
                .map_err(|e| anyhow!("unexpected service from the Skiff API: {e}"))?;
            print!("{}", describe_text(&svc));
            Ok(())
        }
    }
}

/// The settings a revision template runs with, for describe output.
pub fn settings_pairs(t: &RevisionTemplate) -> Vec<(&'static str, String)> {
    let c = t.spec.containers.first();
    let limit = |k: &str| {
        c.and_then(|c| c.resources.as_ref())
            .and_then(|r| r.limits.get(k))
            .cloned()
    };
    let mut out = Vec::new();
    match RevisionSettings::from_template(t) {
        Ok(s) => {
            out.push(("Image", s.image.clone()));
            out.push(("Port", s.port.to_string()));
            out.push(("Concurrency", s.concurrency.to_string()));
            out.push(("Min instances", s.min_instances.to_string()));
            out.push(("Max instances", s.max_instances.to_string()));
            out.push(("Timeout", format_duration(s.timeout)));
            out.push(("CPU", limit("cpu").unwrap_or_else(|| "1".into())));
            out.push(("Memory", limit("memory").unwrap_or_else(|| "512Mi".into())));
            out.push(("Command", s.command.join(" ")));
            out.push(("Args", s.args.join(" ")));
            let env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push(("Env", env.join(", ")));
            let probe = |p: &skiff_model::ProbeSettings| {
                format!(
                    "{} every {}s (timeout {}s, {} failures, first after {}s)",
                    p.describe(),
                    p.period.as_secs(),
                    p.timeout.as_secs(),
                    p.failure_threshold,
                    p.initial_delay.as_secs()
                )
            };
            out.push((
                "Startup probe",
                s.startup_probe.as_ref().map(probe).unwrap_or_else(|| {
                    format!("TCP connection to port {} (default, within 240s)", s.port)
                }),
            ));
            if let Some(p) = &s.liveness_probe {
                out.push(("Liveness probe", probe(p)));
            }
            if s.use_http2 {
                out.push(("HTTP/2", "end to end (port named h2c)".into()));
            }
            if let Some(name) = s.container_name.as_ref().filter(|_| !s.sidecars.is_empty()) {
                out.push(("Ingress container", name.clone()));
            }
            for c in &s.sidecars {
                let after = s
                    .container_dependencies
                    .get(&c.name)
                    .filter(|d| !d.is_empty())
                    .map(|d| format!(", after {}", d.join(", ")))
                    .unwrap_or_default();
                out.push((
                    "Sidecar",
                    format!(
                        "{} ({}, {}m CPU, {} MiB{after})",
                        c.name,
                        c.image,
                        c.cpu_millis,
                        c.memory_bytes >> 20
                    ),
                ));
                let of = format!(" (container {})", c.name);
                let env: Vec<String> = c
                    .secret_env
                    .iter()
                    .map(|e| format!("{}=secret {}:{}", e.name, e.secret, e.version))
                    .collect();
                if !env.is_empty() {
                    out.push(("Secret env", format!("{}{of}", env.join(", "))));
                }
                for v in &c.secret_volumes {
                    out.push(("Volume", format!("{}{of}", secret_volume_line(v))));
                }
                if let Some(p) = &c.liveness_probe {
                    out.push(("Liveness probe", format!("{}{of}", probe(p))));
                }
            }
            for v in &s.memory_volumes {
                out.push((
                    "Volume",
                    format!(
                        "{} at {}: in memory, up to {} MiB{}",
                        v.name,
                        v.mount_path,
                        v.size_bytes >> 20,
                        if v.read_only { ", read-only" } else { "" }
                    ),
                ));
            }
            let secret_env: Vec<String> = s
                .secret_env
                .iter()
                .map(|e| format!("{}=secret {}:{}", e.name, e.secret, e.version))
                .collect();
            if !secret_env.is_empty() {
                out.push(("Secret env", secret_env.join(", ")));
            }
            for v in &s.secret_volumes {
                out.push(("Volume", secret_volume_line(v)));
            }
            for v in &s.host_volumes {
                out.push((
                    "Volume",
                    format!(
                        "{} at {}: host directory {}, read-only",
                        v.name, v.mount_path, v.host_path
                    ),
                ));
            }
        }
        Err(e) => {
            out.push(("Image", c.map(|c| c.image.clone()).unwrap_or_default()));
            out.push(("Invalid", e.to_string()));
        }
    }
    out
}

/// A secret volume as `describe` shows it: `NAME at PATH: secret S, read-only (FILE=S:V, ...)`.
fn secret_volume_line(v: &skiff_model::SecretVolume) -> String {
    let files: Vec<String> = v
        .files
        .iter()
        .map(|(version, path)| format!("{path}={}:{version}", v.secret))
        .collect();
    format!(
        "{} at {}: secret {}, read-only ({})",
        v.name,
        v.mount_path,
        v.secret,
        files.join(", ")
    )
}

pub fn traffic_table(traffic: &[TrafficTarget]) -> String {
    let rows: Vec<Vec<String>> = traffic
        .iter()
        .map(|t| {
            let mut rev = t.revision_name.clone().unwrap_or_default();
            if t.latest_revision == Some(true) {
                rev = if rev.is_empty() {
                    "LATEST".into()
                } else {
                    format!("{rev} (latest)")
                };
            }
            vec![
                format!("{}%", t.percent.unwrap_or(0)),
                rev,
                t.tag.clone().unwrap_or_default(),
                t.url.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["PERCENT", "REVISION", "TAG", "URL"], &rows)
}

pub fn describe_text(svc: &Service) -> String {
    let st = svc.status.clone().unwrap_or_default();
    let ready = crate::output::ready_text(&st.conditions);
    let mut pairs: Vec<(&str, String)> = vec![
        ("Service", svc.metadata.name.clone()),
        ("Project", svc.metadata.namespace.clone()),
        ("URL", or_dash(st.url.as_deref())),
        ("Ready", ready),
        (
            "Ingress",
            svc.metadata
                .annotations
                .get(skiff_model::ANN_INGRESS)
                .cloned()
                .unwrap_or_else(|| "all".into()),
        ),
        ("Latest revision", or_dash(current_revision(svc).as_deref())),
        (
            "Created",
            or_dash(svc.metadata.creation_timestamp.as_deref()),
        ),
    ];
    pairs.extend(settings_pairs(&svc.spec.template));
    let mut out = key_values(&pairs);
    let traffic = if st.traffic.is_empty() {
        &svc.spec.traffic
    } else {
        &st.traffic
    };
    if !traffic.is_empty() {
        out.push_str("\nTraffic:\n");
        for l in traffic_table(traffic).lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Template annotations Skiff acts on, besides the autoscaler's (`autoscaling.knative.dev/*`).
/// Every other annotation is kept and reported.
const ACTED_ON: &[&str] = &[
    ANN_MIN_SCALE,
    ANN_MAX_SCALE,
    ANN_CPU_THROTTLING,
    skiff_model::ANN_EGRESS,
    skiff_model::ANN_CONTAINER_DEPENDENCIES,
];
/// Knative's autoscaler target (requests per instance) and window, checked here by name.
const ANN_TARGET: &str = "autoscaling.knative.dev/target";
const ANN_WINDOW: &str = "autoscaling.knative.dev/window";

/// Reads and checks a Knative Service file; the namespace defaults to `project`. Every error
/// names the field at fault, as a path like `spec.template.spec.containerConcurrency`.
pub fn parse_service_file(text: &str, origin: &str, project: &str) -> Result<Service> {
    // Read once as plain data, to name any field the Service type would drop.
    let input: Option<Value> = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|y| serde_json::to_value(y).ok());
    let mut svc: Service = serde_yaml::from_str(text).map_err(|e| {
        // serde_yaml puts the path of the field at fault first: `spec.template...: invalid type`.
        anyhow!(
            "cannot read {origin} as a Knative Service: {}: give a serving.knative.dev/v1 Service in YAML or JSON",
            e.to_string().replace('\n', " ")
        )
    })?;
    if svc.kind != "Service" {
        bail!(
            "{origin} holds a {}, not a Service: give a serving.knative.dev/v1 Service",
            svc.kind
        );
    }
    if svc.api_version != SERVING_API_VERSION {
        bail!(
            "{origin} has apiVersion {:?}: use apiVersion: {SERVING_API_VERSION}",
            svc.api_version
        );
    }
    if let Some(input) = &input {
        skiff_model::refuse_unknown_fields(input, &svc).map_err(|e| anyhow!("{origin}: {e}"))?;
    }
    if svc.metadata.name.is_empty() {
        bail!("{origin} has no metadata.name: name the service");
    }
    validate_service_name(&svc.metadata.name)
        .map_err(|e| anyhow!("{origin}: metadata.name: {e}"))?;
    if svc.metadata.namespace.is_empty() {
        svc.metadata.namespace = project.to_string();
    }
    validate_namespace(&svc.metadata.namespace)
        .map_err(|e| anyhow!("{origin}: metadata.namespace: {e}"))?;
    check_template(&svc.metadata.name, &svc.spec.template).map_err(|e| anyhow!("{origin}: {e}"))?;
    check_traffic(&svc.spec.traffic).map_err(|e| anyhow!("{origin}: {e}"))?;
    svc.status = None;
    for t in &mut svc.spec.traffic {
        t.url = None;
    }
    Ok(svc)
}

/// Checks a revision template the way the server will, one field at a time, so that the error
/// names the field. Each field is checked alone in an otherwise default template, by the same
/// rules (`RevisionSettings::from_template`) the server applies.
fn check_template(service: &str, t: &RevisionTemplate) -> Result<()> {
    const SPEC: &str = "spec.template.spec";
    let rev = &t.metadata.name;
    if !rev.is_empty() {
        if !rev.starts_with(&format!("{service}-")) {
            bail!("spec.template.metadata.name {rev:?} must start with the service name and '-' ({service}-...)");
        }
        validate_name("revision", rev, 63)
            .map_err(|e| anyhow!("spec.template.metadata.name: {e}"))?;
    }
    let c = match t.spec.containers.as_slice() {
        [] => bail!("{SPEC}.containers is empty: give one container with an image"),
        [c] => c,
        // An instance with sidecars: the containers are checked together (which one is the
        // ingress container, names, the start order), by the server's own rules.
        _ => {
            return RevisionSettings::from_template(t)
                .map(drop)
                .map_err(|e| anyhow!("{}", skiff_model::template_error(&e)))
        }
    };
    const C: &str = "spec.template.spec.containers[0]";
    if c.image.trim().is_empty() {
        bail!("{C}.image is empty: give the image as NAME[:TAG]");
    }
    let alone = |field: &str, edit: &dyn Fn(&mut RevisionTemplate)| -> Result<()> {
        let mut one = RevisionTemplate::default();
        one.spec.containers.push(Container {
            image: c.image.clone(),
            ..Default::default()
        });
        edit(&mut one);
        RevisionSettings::from_template(&one)
            .map(drop)
            .map_err(|e| anyhow!("{field}: {e}"))
    };
    alone(&format!("{SPEC}.containerConcurrency"), &|o| {
        o.spec.container_concurrency = t.spec.container_concurrency
    })?;
    alone(&format!("{SPEC}.timeoutSeconds"), &|o| {
        o.spec.timeout_seconds = t.spec.timeout_seconds
    })?;
    if c.ports.len() > 1 {
        bail!("{C}.ports has {} ports: give exactly one", c.ports.len());
    }
    for (i, p) in c.ports.iter().enumerate() {
        alone(&format!("{C}.ports[{i}].containerPort"), &|o| {
            o.spec.containers[0].ports = vec![p.clone()]
        })?;
    }
    let limits = c
        .resources
        .as_ref()
        .map(|r| r.limits.clone())
        .unwrap_or_default();
    for (key, value) in &limits {
        alone(&format!("{C}.resources.limits.{key}"), &|o| {
            o.spec.containers[0].resources = Some(Resources {
                limits: [(key.clone(), value.clone())].into(),
            })
        })?;
    }
    for (i, e) in c.env.iter().enumerate() {
        alone(&format!("{C}.env[{i}]"), &|o| {
            o.spec.containers[0].env = vec![e.clone()]
        })?;
    }
    for (given, set) in [(&c.startup_probe, true), (&c.liveness_probe, false)] {
        if given.is_some() {
            let mut one = RevisionTemplate::default();
            one.spec.containers.push(Container {
                image: c.image.clone(),
                ports: c.ports.clone(),
                ..Default::default()
            });
            if set {
                one.spec.containers[0].startup_probe = given.clone();
            } else {
                one.spec.containers[0].liveness_probe = given.clone();
            }
            RevisionSettings::from_template(&one)
                .map(drop)
                .map_err(|e| anyhow!("{C}.{e}"))?;
        }
    }
    let ann = &t.metadata.annotations;
    // The start order names containers, so it is checked with them, by the server.
    let acted_on = ACTED_ON
        .iter()
        .filter(|k| **k != skiff_model::ANN_CONTAINER_DEPENDENCIES);
    for key in acted_on.clone() {
        if let Some(v) = ann.get(*key) {
            alone(
                &format!("spec.template.metadata.annotations[{key:?}]"),
                &|o| {
                    o.metadata.annotations.insert(key.to_string(), v.clone());
                },
            )?;
        }
    }
    alone("spec.template.metadata.annotations", &|o| {
        for key in acted_on.clone() {
            if let Some(v) = ann.get(*key) {
                o.metadata.annotations.insert(key.to_string(), v.clone());
            }
        }
    })?;
    if let Some(v) = ann.get(ANN_TARGET) {
        if !v
            .trim()
            .parse::<f64>()
            .is_ok_and(|n| n.is_finite() && n > 0.0)
        {
            bail!("spec.template.metadata.annotations[{ANN_TARGET:?}]: {v:?} is not a positive number: give the requests per instance the autoscaler aims at, like '80'");
        }
    }
    if let Some(v) = ann.get(ANN_WINDOW) {
        let ok = parse_duration(v)
            .is_ok_and(|d| (Duration::from_secs(6)..=Duration::from_secs(3600)).contains(&d));
        if !ok {
            bail!("spec.template.metadata.annotations[{ANN_WINDOW:?}]: {v:?} is not a duration from 6s to 1h: give one like '60s'");
        }
    }
    // Whatever depends on several fields at once.
    RevisionSettings::from_template(t)
        .map_err(|e| anyhow!("{}", skiff_model::template_error(&e)))?;
    Ok(())
}

/// Checks `spec.traffic` as the server will (except that named revisions exist).
fn check_traffic(traffic: &[TrafficTarget]) -> Result<()> {
    if traffic.is_empty() {
        return Ok(());
    }
    let mut total = 0u64;
    let mut tags = std::collections::BTreeSet::new();
    for (i, t) in traffic.iter().enumerate() {
        let at = format!("spec.traffic[{i}]");
        match (&t.revision_name, t.latest_revision.unwrap_or(false)) {
            (Some(r), true) => {
                bail!("{at}: names revision {r} and sets latestRevision: true: give one of them")
            }
            (None, false) => bail!("{at}: give revisionName, or latestRevision: true"),
            (Some(r), false) if r.is_empty() => {
                bail!("{at}.revisionName is empty: name a revision")
            }
            _ => {}
        }
        let p = t.percent.unwrap_or(0);
        if p > 100 {
            bail!("{at}.percent is {p}: give a whole number from 0 to 100");
        }
        total += u64::from(p);
        if let Some(tag) = &t.tag {
            validate_tag(tag).map_err(|e| anyhow!("{at}.tag: {e}"))?;
            if !tags.insert(tag.clone()) {
                bail!("{at}.tag: tag {tag} is given twice: give each tag once");
            }
        }
    }
    if total != 100 {
        bail!("spec.traffic: the percents add up to {total}: they must add up to 100");
    }
    Ok(())
}

/// Annotations of a Service that Skiff keeps but does not act on: every service annotation, and
/// every template annotation but the scale bounds, the autoscaler's and CPU throttling. Sorted,
/// each once.
pub fn idle_annotations(svc: &Service) -> Vec<String> {
    let mut keys: std::collections::BTreeSet<String> =
        svc.metadata.annotations.keys().cloned().collect();
    keys.extend(
        svc.spec
            .template
            .metadata
            .annotations
            .keys()
            .filter(|k| {
                !ACTED_ON.contains(&k.as_str()) && !k.starts_with(skiff_model::AUTOSCALING_PREFIX)
            })
            .cloned(),
    );
    keys.into_iter().collect()
}

fn replace(api: &Api, file: &PathBuf) -> Result<()> {
    let (text, origin) = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the service from stdin")?;
        (s, "stdin".to_string())
    } else {
        let origin = file.display().to_string();
        let s = std::fs::read_to_string(file).map_err(|e| {
            anyhow!("cannot read {origin}: {e}: give the path of a Knative Service YAML file")
        })?;
        (s, origin)
    };
    let svc = parse_service_file(&text, &origin, &api.project)?;
    for key in idle_annotations(&svc) {
        eprintln!("warning: annotation {key} is kept but Skiff does not act on it");
    }
    let name = svc.metadata.name.clone();
    let ns = svc.metadata.namespace.clone();
    let path = api.knative_in(&ns, "services", Some(&name));
    let existing: Option<Value> = api.get_opt(&path)?;
    eprintln!("Applying new configuration to service [{name}] in project [{ns}]...");
    let written: Service = if existing.is_some() {
        api.send_json(Method::PUT, &path, &svc)?
    } else {
        api.send_json(Method::POST, &api.knative_in(&ns, "services", None), &svc)?
    };
    let done = wait_ready(api, &path, &name, written.metadata.generation)?;
    eprintln!("Done.");
    for line in deployed_lines(&done, None) {
        println!("{line}");
    }
    Ok(())
}

fn update_traffic(api: &Api, args: &UpdateTrafficArgs) -> Result<()> {
    let edit = args.edit()?;
    let name = &args.service;
    let path = api.knative("services", Some(name));
    let mut svc: Service = api.get(&path, &[])?;
    svc.spec.traffic = edit_traffic(&svc.spec.traffic, &edit)?;
    svc.status = None;
    eprintln!("Updating traffic of service [{name}]...");
    let written: Service = api.send_json(Method::PUT, &path, &svc)?;
    let done = wait_ready(api, &path, name, written.metadata.generation)?;
    eprintln!("Done.");
    let st = done.status.clone().unwrap_or_default();
    print!("{}", traffic_table(&st.traffic));
    println!("Service URL: {}", st.url.unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": "hello", "namespace": "default", "uid": "u", "generation": 3,
                "resourceVersion": "12", "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"team": "a"},
                "annotations": {"serving.knative.dev/creator": "admin"}
            },
            "spec": {
                "template": {
                    "metadata": {"annotations": {"autoscaling.knative.dev/maxScale": "3"}},
                    "spec": {"containers": [{"image": "busybox", "x-unknown": 1}]}
                },
                "traffic": [{"latestRevision": true, "percent": 100}]
            },
            "status": {"observedGeneration": 3, "url": "http://hello.localhost:8080"}
        })
    }

    #[test]
    fn exports() {
        let cases: Vec<(&str, Value, Value)> = vec![
            (
                "strips status and server metadata, keeps the rest",
                full(),
                json!({
                    "apiVersion": "serving.knative.dev/v1",
                    "kind": "Service",
                    "metadata": {
                        "name": "hello", "namespace": "default",
                        "labels": {"team": "a"},
                        "annotations": {"serving.knative.dev/creator": "admin"}
                    },
                    "spec": full()["spec"].clone()
                }),
            ),
            (
                "already clean",
                json!({"kind": "Service", "metadata": {"name": "a"}}),
                json!({"kind": "Service", "metadata": {"name": "a"}}),
            ),
            ("not an object", json!(null), json!(null)),
        ];
        for (what, input, want) in cases {
            assert_eq!(export(&input), want, "{what}");
        }
    }

    #[test]
    fn export_round_trips_through_replace() {
        // A field Skiff does not know is refused by name, not dropped.
        let yaml = serde_yaml::to_string(&export(&full())).unwrap();
        let err = parse_service_file(&yaml, "svc.yaml", "other").unwrap_err();
        assert_eq!(
            err.to_string(),
            "svc.yaml: spec.template.spec.containers[0].x-unknown: Skiff does not implement this field: remove it"
        );
        let mut known = full();
        known["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("x-unknown");
        let yaml = serde_yaml::to_string(&export(&known)).unwrap();
        let svc = parse_service_file(&yaml, "svc.yaml", "other").unwrap();
        assert_eq!(svc.metadata.name, "hello");
        assert_eq!(svc.metadata.namespace, "default");
        assert!(svc.metadata.uid.is_empty() && svc.metadata.generation == 0);
        assert!(svc.status.is_none());
        assert_eq!(svc.spec.template.spec.containers[0].image, "busybox");
    }

    #[test]
    fn service_files() {
        let ok = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n";
        let svc = parse_service_file(ok, "f", "proj").unwrap();
        assert_eq!(svc.metadata.namespace, "proj");
        let json_ok = r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"web","namespace":"ns"},"spec":{"template":{"spec":{"containers":[{"image":"nginx"}]}}}}"#;
        assert_eq!(
            parse_service_file(json_ok, "f", "proj")
                .unwrap()
                .metadata
                .namespace,
            "ns"
        );
        let bad: &[(&str, &str)] = &[
            ("kind: Job\nmetadata: {name: a}", "not a Service"),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}",
                "apiVersion",
            ),
            (
                "kind: Service\nspec: {template: {spec: {containers: [{image: x}]}}}",
                "no metadata.name",
            ),
            (
                "kind: Service\nmetadata: {name: Bad}\nspec: {template: {spec: {containers: [{image: x}]}}}",
                "invalid service name",
            ),
            (
                "kind: Service\nmetadata: {name: a}",
                "spec.template.spec.containers is empty",
            ),
            ("[1, 2", "cannot read f"),
        ];
        for (text, part) in bad {
            let e = parse_service_file(text, "f", "p").unwrap_err().to_string();
            assert!(e.contains(part), "{text}: {e} lacks {part:?}");
            assert!(!e.contains('\n'), "{text}: one line");
        }
    }

    /// A valid service file with one line replaced (`from` must occur once).
    fn variant(from: &str, to: &str) -> String {
        let base = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: web
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      name: web-v1
      annotations:
        autoscaling.knative.dev/maxScale: '3'
        autoscaling.knative.dev/target: '50'
        run.googleapis.com/cpu-throttling: 'false'
    spec:
      containerConcurrency: 10
      timeoutSeconds: 60
      containers:
      - image: nginx
        env:
        - name: A
          value: b
        ports:
        - containerPort: 8080
        resources:
          limits:
            cpu: '1'
            memory: 256Mi
  traffic:
  - revisionName: web-v1
    percent: 100
    tag: blue
";
        if from.is_empty() {
            return base.to_string();
        }
        assert_eq!(base.matches(from).count(), 1, "{from}");
        base.replace(from, to)
    }

    #[test]
    fn errors_name_the_field() {
        assert!(parse_service_file(&variant("", ""), "f", "p").is_ok());
        let cases: &[(&str, &str, &str)] = &[
            ("containerConcurrency: 10", "containerConcurrency: abc", "spec.template.spec.containerConcurrency: invalid type"),
            ("containerConcurrency: 10", "containerConcurrency: 5000", "spec.template.spec.containerConcurrency: invalid concurrency 5000"),
            ("containerPort: 8080", "containerPort: -1", "spec.template.spec.containers[0].ports[0].containerPort: invalid type: integer `-1`"),
            ("containerPort: 8080", "containerPort: 0", "spec.template.spec.containers[0].ports[0].containerPort: invalid port 0"),
            ("timeoutSeconds: 60", "timeoutSeconds: 7200", "spec.template.spec.timeoutSeconds: invalid timeout"),
            ("memory: 256Mi", "memory: lots", "spec.template.spec.containers[0].resources.limits.memory"),
            ("cpu: '1'", "cpu: many", "spec.template.spec.containers[0].resources.limits.cpu"),
            ("name: A", "name: PORT", "spec.template.spec.containers[0].env[0]: env var PORT is reserved"),
            ("maxScale: '3'", "maxScale: 'x'", "spec.template.metadata.annotations[\"autoscaling.knative.dev/maxScale\"]"),
            ("maxScale: '3'", "maxScale: '3'\n        autoscaling.knative.dev/minScale: '5'", "spec.template.metadata.annotations: min-instances 5 is above"),
            ("target: '50'", "target: 'fast'", "spec.template.metadata.annotations[\"autoscaling.knative.dev/target\"]"),
            ("target: '50'", "window: '2s'", "spec.template.metadata.annotations[\"autoscaling.knative.dev/window\"]"),
            ("name: web-v1", "name: other-v1", "spec.template.metadata.name \"other-v1\" must start with"),
            ("- image: nginx", "- image: ''", "spec.template.spec.containers[0].image is empty"),
            ("percent: 100", "percent: 90", "spec.traffic: the percents add up to 90"),
            ("percent: 100", "percent: 150", "spec.traffic[0].percent is 150"),
            ("percent: 100", "percent: -5", "spec.traffic[0].percent: invalid type: integer `-5`"),
            ("tag: blue", "tag: Blue", "spec.traffic[0].tag"),
            ("revisionName: web-v1", "latestRevision: maybe", "spec.traffic[0].latestRevision: invalid type"),
        ];
        for (from, to, want) in cases {
            let text = variant(from, to);
            let e = parse_service_file(&text, "f.yaml", "p")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{to}: {e} lacks {want:?}");
            assert!(
                e.starts_with("f.yaml") || e.starts_with("cannot read f.yaml"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{to}: one line: {e}");
        }
    }

    #[test]
    fn idle_annotations_are_reported() {
        let svc = parse_service_file(&variant("", ""), "f", "p").unwrap();
        assert_eq!(idle_annotations(&svc), vec!["run.googleapis.com/ingress"]);
    }

    #[test]
    fn service_table() {
        let a = full().to_string();
        let a: ServiceRow = serde_json::from_str(&a).unwrap();
        // Escaped strings are parsed into their own copies.
        let b = r#"{"metadata": {"name": "b"},
            "status": {"latestCreatedRevisionName": "b-00001-\u0078yz",
                       "conditions": [{"type": "Ready", "status": "False"}]}}"#;
        let b: ServiceRow = serde_json::from_str(b).unwrap();
        let got = table(
            &["SERVICE", "URL", "LATEST-REVISION", "READY"],
            &service_rows(&[a, b]),
        );
        assert_eq!(
            got,
            "SERVICE  URL                          LATEST-REVISION  READY\n\
             hello    http://hello.localhost:8080  -                Unknown\n\
             b        -                            b-00001-xyz      False\n"
        );
    }

    #[test]
    fn traffic_tables() {
        let t: Vec<TrafficTarget> = serde_json::from_value(json!([
            {"revisionName": "h-00002-b", "latestRevision": true, "percent": 90},
            {"revisionName": "h-00001-a", "percent": 10, "tag": "old",
             "url": "http://old---h.localhost:8080"},
            {"latestRevision": true, "tag": "new"}
        ]))
        .unwrap();
        assert_eq!(
            traffic_table(&t),
            "PERCENT  REVISION            TAG  URL\n\
             90%      h-00002-b (latest)\n\
             10%      h-00001-a           old  http://old---h.localhost:8080\n\
             0%       LATEST              new\n"
        );
    }

    #[test]
    fn describes() {
        let svc: Service = serde_json::from_value(full()).unwrap();
        let text = describe_text(&svc);
        for part in [
            "Service:          hello\n",
            "URL:              http://hello.localhost:8080\n",
            "Max instances:    3\n",
            "Timeout:          300s\n",
            "Memory:           512Mi\n",
            "\nTraffic:\n  PERCENT",
        ] {
            assert!(text.contains(part), "{text} lacks {part:?}");
        }
    }
}
