//! `skiff deploy`: turns flags into a Knative Service (merged over the existing one, as Cloud
//! Run keeps the settings of earlier deploys), writes it, applies the IAM flags and waits for
//! the new revision to be ready. Also holds the wait-and-report steps `services replace` and
//! `services update-traffic` share.

use crate::api::{encode, Api};
use anyhow::{anyhow, bail, Result};
use reqwest::Method;
use skiff_model::{
    parse_cpu, parse_duration, parse_env_list, parse_size, ready_status, validate_service_name,
    validate_tag, Container, ContainerPort, EnvVar, Policy, Resources, RevisionSettings,
    RevisionTemplate, Service, TrafficTarget, ANN_CPU_THROTTLING, ANN_MAX_SCALE, ANN_MIN_SCALE,
    SERVING_API_VERSION,
};
use skiff_registry::is_registry_reference;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeployArgs {
    /// Name of the service to create or update
    #[arg(value_name = "SERVICE")]
    pub service: String,

    /// Container image: NAME[:TAG] or NAME@sha256:HEX (required for a new service, unless
    /// --source is given)
    #[arg(long, value_name = "REF", conflicts_with = "source")]
    pub image: Option<String>,

    /// Build the image from this source directory (its Dockerfile, or a detected language:
    /// Python, Node.js, Go, a static site) and deploy it
    #[arg(long, value_name = "DIR")]
    pub source: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub build: crate::builds::SourceOptions,

    /// Port the container listens on, given to it as PORT [default: 8080]
    #[arg(long, value_name = "N")]
    pub port: Option<u32>,

    /// Most requests one instance handles at once, 1..1000 [default: 80]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u64>,

    /// Instances kept running even without traffic, or `default` [default: 0]
    #[arg(long, value_name = "N", value_parser = parse_scale)]
    pub min_instances: Option<Scale>,

    /// Most instances the service scales to, or `default` [default: 100]
    #[arg(long, value_name = "N", value_parser = parse_scale)]
    pub max_instances: Option<Scale>,

    /// Request timeout, e.g. 30s, 10m (at most 3600s) [default: 300s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,

    /// CPU limit per instance, e.g. 1, 2, 0.5, 500m [default: 1]
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<String>,

    /// Memory limit per instance, e.g. 512Mi, 1Gi [default: 512Mi]
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,

    /// Replace all environment variables with KEY=VALUE,...
    #[arg(
        long,
        value_name = "KEY=VALUE,...",
        conflicts_with_all = ["update_env_vars", "remove_env_vars", "clear_env_vars"]
    )]
    pub set_env_vars: Option<String>,

    /// Add or change environment variables KEY=VALUE,...
    #[arg(long, value_name = "KEY=VALUE,...", conflicts_with = "clear_env_vars")]
    pub update_env_vars: Option<String>,

    /// Remove environment variables KEY,...
    #[arg(long, value_name = "KEY,...", conflicts_with = "clear_env_vars")]
    pub remove_env_vars: Option<String>,

    /// Remove all environment variables
    #[arg(long)]
    pub clear_env_vars: bool,

    /// Replace all secret references: ENV=SECRET:VERSION or /dir/file=SECRET:VERSION,...
    /// (VERSION: latest, resolved at each instance start, or a number)
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

    /// Entrypoint, as a comma list (empty: the image's own)
    #[arg(long, value_name = "CMD,...", allow_hyphen_values = true)]
    pub command: Option<String>,

    /// Arguments to the entrypoint, as a comma list (empty: the image's own)
    #[arg(long, value_name = "ARG,...", allow_hyphen_values = true)]
    pub args: Option<String>,

    /// CPU only while a request is in flight, billed per request (the default)
    #[arg(long, overrides_with = "no_cpu_throttling")]
    pub cpu_throttling: bool,

    /// CPU for the instance's whole life, billed per instance
    #[arg(long, overrides_with = "cpu_throttling")]
    pub no_cpu_throttling: bool,

    /// The service account the instances run as (their identity at the metadata server and
    /// in IAM bindings) [default: the project's Compute Engine default service account]
    #[arg(long, value_name = "EMAIL")]
    pub service_account: Option<String>,

    /// Outbound traffic: `all` (internet, other services, DNS, metadata server) or `none`
    /// (loopback only)
    #[arg(long, value_name = "all|none", value_parser = ["all", "none"])]
    pub egress: Option<String>,

    /// Send HTTP/2 to the container (cleartext, prior knowledge; its port is named h2c), as
    /// gRPC servers need
    #[arg(long, overrides_with = "no_use_http2")]
    pub use_http2: bool,

    /// Send HTTP/1.1 to the container (its port is named http1; the default)
    #[arg(long, overrides_with = "use_http2")]
    pub no_use_http2: bool,

    /// Give the new revision no traffic until traffic is moved to it
    #[arg(long)]
    pub no_traffic: bool,

    /// Tag the new revision; it answers at TAG---SERVICE.localhost
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    /// Who may reach the service: `all`, or `internal` (and
    /// `internal-and-cloud-load-balancing`, the same in Skiff): only Skiff's own instances and
    /// jobs; a request from elsewhere gets 404
    #[arg(long, value_name = "all|internal", value_parser = skiff_model::Ingress::VALUES)]
    pub ingress: Option<String>,

    /// Let anyone invoke the service without a token
    #[arg(long, conflicts_with = "no_allow_unauthenticated")]
    pub allow_unauthenticated: bool,

    /// Require an identity token to invoke the service
    #[arg(long)]
    pub no_allow_unauthenticated: bool,

    /// Starts the flags of container NAME, as gcloud's --container does: the container flags
    /// after it (--image, --port, --cpu, --memory, --command, --args, the env and secret
    /// flags, --[no-]use-http2, --depends-on CONTAINER,...) are that container's, up to the
    /// next --container. Give the service's own flags before the first one. A container not
    /// named keeps its settings; a new one needs --image; the one with --port is the ingress
    /// container
    #[arg(
        long,
        value_name = "NAME [FLAGS]",
        num_args = 1..,
        allow_hyphen_values = true
    )]
    pub container: Vec<String>,
}

/// `--min-instances`/`--max-instances`: a number, or `default` to drop the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Default,
    N(u64),
}

fn parse_scale(s: &str) -> Result<Scale, String> {
    if s.trim() == "default" {
        return Ok(Scale::Default);
    }
    s.trim()
        .parse()
        .map(Scale::N)
        .map_err(|_| format!("{s:?} is not a whole number: use e.g. 0, 3 or default"))
}

/// Splits a gcloud-style list: `a,b,c`, or `^:^a:b,c` to use another delimiter. Empty gives an
/// empty list.
pub fn split_list(s: &str) -> Vec<String> {
    let (delim, rest) = match s.strip_prefix('^').and_then(|r| r.split_once('^')) {
        Some((d, rest)) if !d.is_empty() => (d.to_string(), rest),
        _ => (",".to_string(), s),
    };
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(delim.as_str()).map(String::from).collect()
}

/// Parses `K=V,...` (with the alternate-delimiter syntax of [`split_list`]).
pub fn parse_env(s: &str) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in split_list(s) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid env var {item:?}: use KEY=VALUE,KEY2=VALUE2"))?;
        // Validates the name the way the server does.
        parse_env_list(&format!("{}=", k.trim())).map_err(|e| anyhow!("{e}"))?;
        let k = k.trim().to_string();
        out.retain(|(o, _)| *o != k);
        out.push((k, v.to_string()));
    }
    Ok(out)
}

/// The flags of one deploy, checked for syntax, ready to apply to a template.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub image: Option<String>,
    pub port: Option<u32>,
    pub concurrency: Option<u64>,
    pub min_instances: Option<Scale>,
    pub max_instances: Option<Scale>,
    pub timeout_secs: Option<u64>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    /// Replaces the whole env list (`--set-env-vars`, or empty for `--clear-env-vars`).
    pub env_set: Option<Vec<(String, String)>>,
    pub env_update: Vec<(String, String)>,
    pub env_remove: Vec<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub cpu_throttling: Option<bool>,
    pub service_account: Option<String>,
    pub egress: Option<String>,
    pub use_http2: Option<bool>,
    pub secrets: crate::secretrefs::SecretFlags,
    /// The `--container NAME` groups, in order (empty: the flags above are the ingress
    /// container's).
    pub containers: Vec<crate::containers::ContainerChanges>,
}

impl DeployArgs {
    /// Checks every flag's syntax; nothing is sent before this passes.
    pub fn changes(&self) -> Result<Changes> {
        let containers = if self.container.is_empty() {
            Vec::new()
        } else {
            if let Some(f) = crate::containers::top_level_container_flags(self).first() {
                bail!(
                    "{f} is a container flag: with --container, give it after the --container NAME it is for"
                );
            }
            crate::containers::parse_groups(&self.container)?
        };
        let timeout_secs = match &self.timeout {
            None => None,
            Some(t) => {
                let d = parse_duration(t).map_err(|e| anyhow!("{e}"))?;
                if d.subsec_nanos() != 0 {
                    bail!("invalid timeout {t:?}: use whole seconds, like 30s or 5m");
                }
                Some(d.as_secs())
            }
        };
        if let Some(c) = &self.cpu {
            parse_cpu(c).map_err(|e| anyhow!("{e}"))?;
        }
        if let Some(m) = &self.memory {
            parse_size(m).map_err(|e| anyhow!("{e}"))?;
        }
        if let Some(i) = &self.image {
            if i.trim().is_empty() {
                bail!("--image is empty: pass --image NAME[:TAG]");
            }
        }
        if let Some(sa) = &self.service_account {
            skiff_model::validate_service_account(sa.trim())
                .map_err(|e| anyhow!("--service-account: {e}"))?;
        }
        let env_set = match (&self.set_env_vars, self.clear_env_vars) {
            (Some(s), _) => Some(parse_env(s)?),
            (None, true) => Some(Vec::new()),
            (None, false) => None,
        };
        let env_update = match &self.update_env_vars {
            Some(s) => parse_env(s)?,
            None => Vec::new(),
        };
        let env_remove = self
            .remove_env_vars
            .as_deref()
            .map(split_list)
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect();
        Ok(Changes {
            image: self.image.as_ref().map(|s| s.trim().to_string()),
            port: self.port,
            concurrency: self.concurrency,
            min_instances: self.min_instances,
            max_instances: self.max_instances,
            timeout_secs,
            cpu: self.cpu.as_ref().map(|s| s.trim().to_string()),
            memory: self.memory.as_ref().map(|s| s.trim().to_string()),
            env_set,
            env_update,
            env_remove,
            command: self.command.as_deref().map(split_list),
            args: self.args.as_deref().map(split_list),
            cpu_throttling: match (self.cpu_throttling, self.no_cpu_throttling) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            service_account: self.service_account.as_ref().map(|s| s.trim().to_string()),
            egress: self.egress.clone(),
            use_http2: match (self.use_http2, self.no_use_http2) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            secrets: crate::secretrefs::SecretFlags::parse(
                self.set_secrets.as_deref(),
                self.update_secrets.as_deref(),
                self.remove_secrets.as_deref(),
                self.clear_secrets,
            )?,
            containers,
        })
    }
}

/// Applies the flags given to a revision template, keeping every setting not mentioned.
pub fn apply_changes(t: &mut RevisionTemplate, ch: &Changes) -> Result<()> {
    if t.spec.containers.is_empty() && ch.containers.is_empty() {
        t.spec.containers.push(Container::default());
    }
    for (key, v) in [
        (ANN_MIN_SCALE, ch.min_instances),
        (ANN_MAX_SCALE, ch.max_instances),
    ] {
        match v {
            None => {}
            Some(Scale::Default) => {
                t.metadata.annotations.remove(key);
            }
            Some(Scale::N(n)) => {
                t.metadata
                    .annotations
                    .insert(key.to_string(), n.to_string());
            }
        }
    }
    if let Some(on) = ch.cpu_throttling {
        t.metadata
            .annotations
            .insert(ANN_CPU_THROTTLING.to_string(), on.to_string());
    }
    if let Some(e) = &ch.egress {
        if e == "all" {
            t.metadata.annotations.remove(skiff_model::ANN_EGRESS);
        } else {
            t.metadata
                .annotations
                .insert(skiff_model::ANN_EGRESS.to_string(), e.clone());
        }
    }
    if let Some(sa) = &ch.service_account {
        t.spec.service_account_name = Some(sa.clone());
    }
    if let Some(n) = ch.concurrency {
        t.spec.container_concurrency = Some(n);
    }
    if let Some(s) = ch.timeout_secs {
        t.spec.timeout_seconds = Some(s);
    }
    if !ch.containers.is_empty() {
        return crate::containers::apply_groups(t, &ch.containers);
    }
    // With sidecars, the flags are the ingress container's (the one with ports).
    let ingress = if t.spec.containers.len() > 1 {
        t.spec
            .containers
            .iter()
            .position(|c| !c.ports.is_empty())
            .unwrap_or(0)
    } else {
        0
    };
    apply_container(&mut t.spec, ingress, ch)
}

/// Applies the container flags of `ch` (image, port, HTTP/2, limits, env, command, args,
/// secrets) to `spec.containers[i]`, keeping what they do not mention.
pub fn apply_container(spec: &mut skiff_model::RevisionSpec, i: usize, ch: &Changes) -> Result<()> {
    let c = &mut spec.containers[i];
    if let Some(i) = &ch.image {
        c.image = i.clone();
    }
    if let Some(p) = ch.port {
        let name = c.ports.first().and_then(|p| p.name.clone());
        c.ports = vec![ContainerPort {
            name,
            container_port: p,
        }];
    }
    if let Some(h2) = ch.use_http2 {
        let name = if h2 { "h2c" } else { "http1" };
        match c.ports.first_mut() {
            Some(p) => p.name = Some(name.into()),
            None => c.ports.push(ContainerPort {
                name: Some(name.into()),
                container_port: u32::from(skiff_model::DEFAULT_PORT),
            }),
        }
    }
    for (key, v) in [("cpu", &ch.cpu), ("memory", &ch.memory)] {
        if let Some(v) = v {
            c.resources
                .get_or_insert_with(Resources::default)
                .limits
                .insert(key.to_string(), v.clone());
        }
    }
    if let Some(set) = &ch.env_set {
        // Env vars from secrets are the secret flags' to change.
        c.env.retain(|e| e.value_from.is_some());
        c.env.extend(set.iter().map(|(k, v)| EnvVar {
            name: k.clone(),
            value: v.clone(),
            value_from: None,
        }));
    }
    c.env
        .retain(|e| e.value_from.is_some() || !ch.env_remove.contains(&e.name));
    for (k, v) in &ch.env_update {
        match c.env.iter_mut().find(|e| e.name == *k) {
            Some(e) => e.value = v.clone(),
            None => c.env.push(EnvVar {
                name: k.clone(),
                value: v.clone(),
                value_from: None,
            }),
        }
    }
    if let Some(cmd) = &ch.command {
        c.command = cmd.clone();
    }
    if let Some(a) = &ch.args {
        c.args = a.clone();
    }
    crate::secretrefs::apply(&mut spec.containers[i], &mut spec.volumes, &ch.secrets)
}

/// `--no-traffic`: the traffic the service serves now, pinned to revision names, so that the
/// revision about to be created gets none.
pub fn pin_traffic(
    service: &str,
    current: &[TrafficTarget],
    latest_ready: Option<&str>,
) -> Result<Vec<TrafficTarget>> {
    if current.is_empty() {
        bail!("service {service} serves no traffic yet, so --no-traffic cannot keep it: deploy without --no-traffic");
    }
    current
        .iter()
        .map(|t| {
            let rev = t
                .revision_name
                .clone()
                .or_else(|| {
                    (t.latest_revision == Some(true))
                        .then(|| latest_ready.map(String::from))
                        .flatten()
                })
                .ok_or_else(|| {
                    anyhow!("service {service} has no ready revision to keep traffic on: deploy without --no-traffic")
                })?;
            Ok(TrafficTarget {
                revision_name: Some(rev),
                latest_revision: None,
                percent: t.percent,
                tag: t.tag.clone(),
                url: None,
            })
        })
        .collect()
}

/// `--tag TAG`: the new revision `rev` answers at the tag's URL, and keeps the tag through
/// later deploys (as in Cloud Run). An older target with the same tag loses it (and is dropped
/// unless it carries traffic).
pub fn add_tag(traffic: &mut Vec<TrafficTarget>, tag: &str, rev: &str) {
    if traffic.is_empty() {
        traffic.push(TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..Default::default()
        });
    }
    let old = std::mem::take(traffic);
    for mut t in old {
        if t.tag.as_deref() == Some(tag) {
            if t.percent.unwrap_or(0) == 0 {
                continue;
            }
            t.tag = None;
        }
        traffic.push(t);
    }
    traffic.push(TrafficTarget {
        revision_name: Some(rev.to_string()),
        percent: Some(0),
        tag: Some(tag.to_string()),
        ..Default::default()
    });
}

/// The Service to write for a deploy: the existing one with the flags applied, or a new one.
pub fn build_service(
    existing: Option<&Service>,
    project: &str,
    args: &DeployArgs,
    ch: &Changes,
) -> Result<Service> {
    let name = &args.service;
    let mut svc = match existing {
        Some(old) => {
            let mut svc = old.clone();
            svc.status = None;
            svc.spec.template.metadata.name.clear();
            if args.no_traffic {
                let st = old.status.clone().unwrap_or_default();
                svc.spec.traffic =
                    pin_traffic(name, &st.traffic, st.latest_ready_revision_name.as_deref())?;
            }
            svc
        }
        None => {
            if ch.image.is_none() && ch.containers.is_empty() {
                bail!("service {name} does not exist yet: pass --image NAME[:TAG] or --source DIR to create it");
            }
            if args.no_traffic {
                bail!("--no-traffic cannot be used when creating service {name}: deploy without it first");
            }
            let mut svc = Service {
                api_version: SERVING_API_VERSION.to_string(),
                kind: "Service".to_string(),
                ..Default::default()
            };
            svc.metadata.name = name.clone();
            svc.metadata.namespace = project.to_string();
            svc
        }
    };
    apply_changes(&mut svc.spec.template, ch)?;
    if let Some(ingress) = &args.ingress {
        // On the Service itself, where gcloud writes it: the revisions do not carry it.
        svc.metadata
            .annotations
            .insert(skiff_model::ANN_INGRESS.to_string(), ingress.clone());
    }
    if let Some(tag) = &args.tag {
        // The tag names the new revision, so the revision is named here rather than by the
        // server.
        let generation = existing.map_or(1, |o| o.metadata.generation + 1);
        let rev = skiff_model::revision_name(name, generation);
        svc.spec.template.metadata.name = rev.clone();
        add_tag(&mut svc.spec.traffic, tag, &rev);
    }
    for t in &mut svc.spec.traffic {
        t.url = None;
    }
    RevisionSettings::from_template(&svc.spec.template).map_err(|e| anyhow!("{e}"))?;
    Ok(svc)
}

/// The checks that need no server: names and flag syntax.
pub fn precheck(args: &DeployArgs) -> Result<Changes> {
    validate_service_name(&args.service).map_err(|e| anyhow!("{e}"))?;
    if let Some(t) = &args.tag {
        validate_tag(t).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(dir) = &args.source {
        if !dir.is_dir() {
            bail!(
                "--source {}: no such directory: give the directory that holds the source",
                dir.display()
            );
        }
        args.build.check()?;
    } else if args.build.set_build_env_vars.is_some()
        || args.build.base_image.is_some()
        || args.build.build_timeout.is_some()
    {
        bail!("--set-build-env-vars, --base-image and --build-timeout apply to --source builds: add --source DIR");
    }
    args.changes()
}

pub fn run(api: &Api, args: DeployArgs) -> Result<()> {
    let name = args.service.clone();
    let mut ch = precheck(&args)?;
    let path = api.knative("services", Some(&name));
    let existing: Option<Service> = api.get_opt(&path)?;
    if let Some(dir) = &args.source {
        // Every flag is checked against the service before the build, so that a build is
        // not wasted on a deploy that would be refused.
        let mut check = ch.clone();
        check.image = Some("source-build".into());
        build_service(existing.as_ref(), &api.project, &args, &check)?;
        let built =
            crate::builds::submit(api, dir, crate::builds::Target::Service(&name), &args.build)?;
        let image = built
            .results
            .and_then(|r| r.images.into_iter().next())
            .ok_or_else(|| anyhow!("build {} succeeded without an image", built.id))?;
        eprintln!("Built image {}@{}.", image.name, image.digest);
        ch.image = Some(image.name);
    }
    let svc = build_service(existing.as_ref(), &api.project, &args, &ch)?;

    let images = ch.image.iter().chain(
        ch.containers
            .iter()
            .filter_map(|g| g.changes.image.as_ref()),
    );
    for image in images.filter(|i| is_registry_reference(i)) {
        // Pulled first so that the user sees it; the deploy then finds it in the store.
        crate::images::pull(api, image)?;
    }
    eprintln!("Deploying service [{name}] in project [{}]...", api.project);
    let written: Service = if existing.is_some() {
        api.send_json(Method::PUT, &path, &svc)?
    } else {
        api.send_json(Method::POST, &api.knative("services", None), &svc)?
    };
    if args.allow_unauthenticated || args.no_allow_unauthenticated {
        set_public(api, &name, args.allow_unauthenticated)?;
    }
    // Said only of what the server did: a new revision, only traffic, or nothing (the same
    // settings and an image whose tag still names the digest the latest revision runs).
    let latest = |s: Option<&Service>| {
        s.and_then(|s| s.status.as_ref()?.latest_created_revision_name.clone())
    };
    let unchanged = existing
        .as_ref()
        .is_some_and(|e| e.metadata.generation == written.metadata.generation);
    if unchanged {
        eprintln!(
            "No new revision: the service already has these settings, and its image names the digest its latest revision runs."
        );
    } else if existing.is_some() && latest(existing.as_ref()) == latest(Some(&written)) {
        eprintln!("Routing traffic...");
    } else {
        eprintln!("Creating revision and routing traffic...");
    }
    let done = wait_ready(api, &path, &name, written.metadata.generation)?;
    eprintln!("Done.");
    for line in deployed_lines(&done, args.tag.as_deref()) {
        println!("{line}");
    }
    Ok(())
}

/// Makes the service public (`allUsers` as `roles/run.invoker`) or private.
pub fn set_public(api: &Api, service: &str, public: bool) -> Result<()> {
    let base = format!(
        "/v1/projects/{}/locations/local/services/{}",
        encode(&api.project),
        encode(service)
    );
    let mut policy: Policy = api.get(&format!("{base}:getIamPolicy"), &[])?;
    if policy.is_public() == public {
        return Ok(());
    }
    policy.set_public(public);
    let _: Policy = api.send_json(
        Method::POST,
        &format!("{base}:setIamPolicy"),
        &serde_json::json!({ "policy": policy }),
    )?;
    if public {
        eprintln!("Service [{service}] allows unauthenticated invocations.");
    } else {
        eprintln!("Service [{service}] requires an identity token to invoke.");
    }
    Ok(())
}

const WAIT_LIMIT: Duration = Duration::from_secs(300);

/// Polls the service until the server has seen `generation` and `Ready` is settled.
pub fn wait_ready(api: &Api, path: &str, name: &str, generation: u64) -> Result<Service> {
    let start = Instant::now();
    loop {
        let svc: Service = api.get(path, &[])?;
        if let Some(done) = settled(&svc, generation) {
            return done.map(|_| svc);
        }
        if start.elapsed() > WAIT_LIMIT {
            bail!("service {name} did not become ready within 5 minutes: see `skiff services describe {name}` and `skiff logs read --service {name}`");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `None` while the server is still working on `generation`; then `Ok` if Ready is True, or
/// the failure.
pub fn settled(svc: &Service, generation: u64) -> Option<Result<()>> {
    let st = svc.status.as_ref()?;
    if st.observed_generation < generation {
        return None;
    }
    let ready = ready_status(&st.conditions)?;
    match ready.status.as_str() {
        "True" => Some(Ok(())),
        "False" => {
            let why = ready
                .message
                .clone()
                .or_else(|| ready.reason.clone())
                .unwrap_or_else(|| "no reason given".to_string());
            Some(Err(anyhow!(
                "service {} is not ready: {}",
                svc.metadata.name,
                why.replace('\n', " ")
            )))
        }
        _ => None,
    }
}

/// The revision that now stands for the service (the latest ready one, else the latest
/// created).
pub fn current_revision(svc: &Service) -> Option<String> {
    let st = svc.status.as_ref()?;
    st.latest_ready_revision_name
        .clone()
        .or_else(|| st.latest_created_revision_name.clone())
}

/// What a finished deploy prints on stdout; the last line is always `Service URL: ...`.
pub fn deployed_lines(svc: &Service, tag: Option<&str>) -> Vec<String> {
    let st = svc.status.clone().unwrap_or_default();
    let mut lines = Vec::new();
    if let Some(rev) = current_revision(svc) {
        let percent: u32 = st
            .traffic
            .iter()
            .filter(|t| {
                t.revision_name.as_deref() == Some(rev.as_str())
                    || (t.revision_name.is_none() && t.latest_revision == Some(true))
            })
            .filter_map(|t| t.percent)
            .sum();
        lines.push(format!(
            "Service [{}] revision [{rev}] has been deployed and is serving {percent} percent of traffic.",
            svc.metadata.name
        ));
    }
    if let Some(tag) = tag {
        if let Some(url) = st
            .traffic
            .iter()
            .find(|t| t.tag.as_deref() == Some(tag))
            .and_then(|t| t.url.as_deref())
        {
            lines.push(format!("The revision can be reached directly at {url}"));
        }
    }
    lines.push(format!("Service URL: {}", st.url.unwrap_or_default()));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{Condition, ServiceStatus};

    fn args(f: impl FnOnce(&mut DeployArgs)) -> DeployArgs {
        let mut a = DeployArgs {
            service: "hello".into(),
            ..Default::default()
        };
        f(&mut a);
        a
    }

    fn target(
        rev: Option<&str>,
        latest: bool,
        pct: Option<u32>,
        tag: Option<&str>,
    ) -> TrafficTarget {
        TrafficTarget {
            revision_name: rev.map(String::from),
            latest_revision: latest.then_some(true),
            percent: pct,
            tag: tag.map(String::from),
            url: None,
        }
    }

    /// An existing service: image busybox, port 9000, env A=1 B=2, min 1, 100% latest on rev 1.
    fn existing() -> Service {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "generation": 1,
                         "resourceVersion": "7", "uid": "u1"},
            "spec": {
                "template": {
                    "metadata": {"name": "hello-00001-abc",
                                 "annotations": {"autoscaling.knative.dev/minScale": "1"}},
                    "spec": {"containerConcurrency": 10, "containers": [{
                        "image": "busybox",
                        "args": ["httpd"],
                        "ports": [{"name": "http1", "containerPort": 9000}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "resources": {"limits": {"cpu": "2"}}
                    }]}
                },
                "traffic": [{"latestRevision": true, "percent": 100}]
            }
        }))
        .unwrap();
        svc.status = Some(ServiceStatus {
            observed_generation: 1,
            latest_ready_revision_name: Some("hello-00001-abc".into()),
            url: Some("http://hello.localhost:8080".into()),
            traffic: vec![TrafficTarget {
                url: None,
                ..target(Some("hello-00001-abc"), true, Some(100), None)
            }],
            ..Default::default()
        });
        svc
    }

    /// One case: the deploy flags, whether the service exists, and a check of the result.
    type Check = fn(&Service);

    fn check(what: &str, exists: bool, a: DeployArgs, want: Result<Check, &str>) {
        let old = exists.then(existing);
        let got = a
            .changes()
            .and_then(|ch| build_service(old.as_ref(), "default", &a, &ch));
        match (got, want) {
            (Ok(svc), Ok(f)) => {
                assert!(svc.status.is_none(), "{what}: status is not sent");
                assert_eq!(
                    svc.spec.template.metadata.name.is_empty(),
                    a.tag.is_none(),
                    "{what}: the template is named only for --tag"
                );
                f(&svc)
            }
            (Err(e), Err(part)) => {
                let e = e.to_string();
                assert!(e.contains(part), "{what}: error {e:?} lacks {part:?}");
                assert!(!e.contains('\n'), "{what}: one line");
            }
            (Ok(svc), Err(part)) => panic!("{what}: wanted error {part:?}, got {svc:?}"),
            (Err(e), Ok(_)) => panic!("{what}: unexpected error {e}"),
        }
    }

    fn c0(s: &Service) -> &Container {
        &s.spec.template.spec.containers[0]
    }

    fn env(s: &Service) -> Vec<(String, String)> {
        c0(s)
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }

    fn kv(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn deploy_flags_to_service() {
        check(
            "new service, image only",
            false,
            args(|a| a.image = Some("busybox:latest".into())),
            Ok(|s| {
                assert_eq!(s.metadata.name, "hello");
                assert_eq!(s.metadata.namespace, "default");
                assert_eq!(s.api_version, SERVING_API_VERSION);
                assert_eq!(s.kind, "Service");
                assert_eq!(c0(s).image, "busybox:latest");
                assert!(c0(s).ports.is_empty() && c0(s).env.is_empty());
                assert!(s.spec.traffic.is_empty());
                assert!(s.spec.template.metadata.annotations.is_empty());
            }),
        );
        check(
            "new service, every flag",
            false,
            args(|a| {
                a.image = Some("img".into());
                a.port = Some(3000);
                a.concurrency = Some(5);
                a.min_instances = Some(Scale::N(1));
                a.max_instances = Some(Scale::N(3));
                a.timeout = Some("10m".into());
                a.cpu = Some("500m".into());
                a.memory = Some("1Gi".into());
                a.set_env_vars = Some("X=1,Y=a=b".into());
                a.command = Some("/bin/sh".into());
                a.args = Some("-c,echo hi".into());
                a.no_cpu_throttling = true;
            }),
            Ok(|s| {
                let t = &s.spec.template;
                assert_eq!(t.metadata.annotations[ANN_CPU_THROTTLING], "false");
                assert_eq!(t.metadata.annotations[ANN_MIN_SCALE], "1");
                assert_eq!(t.metadata.annotations[ANN_MAX_SCALE], "3");
                assert_eq!(t.spec.container_concurrency, Some(5));
                assert_eq!(t.spec.timeout_seconds, Some(600));
                assert_eq!(c0(s).ports[0].container_port, 3000);
                let limits = &c0(s).resources.as_ref().unwrap().limits;
                assert_eq!(limits["cpu"], "500m");
                assert_eq!(limits["memory"], "1Gi");
                assert_eq!(env(s), kv(&[("X", "1"), ("Y", "a=b")]));
                assert_eq!(c0(s).command, vec!["/bin/sh"]);
                assert_eq!(c0(s).args, vec!["-c", "echo hi"]);
            }),
        );
        check(
            "existing, no flags keeps everything",
            true,
            args(|_| {}),
            Ok(|s| {
                let old = existing();
                assert_eq!(s.spec.template.spec, old.spec.template.spec);
                assert_eq!(
                    s.spec.template.metadata.annotations,
                    old.spec.template.metadata.annotations
                );
                assert_eq!(s.spec.traffic, old.spec.traffic);
                assert_eq!(s.metadata.resource_version, "7");
            }),
        );
        check(
            "existing, new image keeps port, env, limits, scale",
            true,
            args(|a| a.image = Some("busybox:v2".into())),
            Ok(|s| {
                assert_eq!(c0(s).image, "busybox:v2");
                assert_eq!(c0(s).ports[0].container_port, 9000);
                assert_eq!(env(s), kv(&[("A", "1"), ("B", "2")]));
                assert_eq!(c0(s).resources.as_ref().unwrap().limits["cpu"], "2");
                assert_eq!(c0(s).args, vec!["httpd"]);
                assert_eq!(s.spec.template.spec.container_concurrency, Some(10));
                assert_eq!(s.spec.template.metadata.annotations[ANN_MIN_SCALE], "1");
            }),
        );
        check(
            "existing, --use-http2 names the port h2c and keeps its number",
            true,
            args(|a| a.use_http2 = true),
            Ok(|s| {
                assert_eq!(c0(s).ports[0].name.as_deref(), Some("h2c"));
                assert_eq!(c0(s).ports[0].container_port, 9000);
            }),
        );
        check(
            "new, --use-http2 without --port: h2c on 8080",
            false,
            args(|a| {
                a.image = Some("busybox".into());
                a.use_http2 = true;
            }),
            Ok(|s| {
                assert_eq!(
                    c0(s).ports,
                    vec![ContainerPort {
                        name: Some("h2c".into()),
                        container_port: 8080
                    }]
                );
            }),
        );
        check(
            "existing, --no-use-http2 goes back to http1",
            true,
            args(|a| a.no_use_http2 = true),
            Ok(|s| assert_eq!(c0(s).ports[0].name.as_deref(), Some("http1"))),
        );
        check(
            "existing, port keeps the port's name",
            true,
            args(|a| a.port = Some(8081)),
            Ok(|s| {
                assert_eq!(
                    c0(s).ports,
                    vec![ContainerPort {
                        name: Some("http1".into()),
                        container_port: 8081
                    }]
                )
            }),
        );
        check(
            "existing, --set-env-vars replaces",
            true,
            args(|a| a.set_env_vars = Some("C=3".into())),
            Ok(|s| assert_eq!(env(s), kv(&[("C", "3")]))),
        );
        check(
            "existing, --update-env-vars and --remove-env-vars edit",
            true,
            args(|a| {
                a.update_env_vars = Some("B=20,D=4".into());
                a.remove_env_vars = Some("A".into());
            }),
            Ok(|s| assert_eq!(env(s), kv(&[("B", "20"), ("D", "4")]))),
        );
        check(
            "existing, --clear-env-vars",
            true,
            args(|a| a.clear_env_vars = true),
            Ok(|s| assert!(c0(s).env.is_empty())),
        );
        check(
            "existing, empty --args resets to the image's",
            true,
            args(|a| a.args = Some(String::new())),
            Ok(|s| assert!(c0(s).args.is_empty())),
        );
        check(
            "alternate delimiter",
            true,
            args(|a| {
                a.args = Some("^:^-c:echo a,b".into());
                a.set_env_vars = Some("^;^L=a,b;M=2".into());
            }),
            Ok(|s| {
                assert_eq!(c0(s).args, vec!["-c", "echo a,b"]);
                assert_eq!(env(s), kv(&[("L", "a,b"), ("M", "2")]));
            }),
        );
        check(
            "existing, min-instances default drops the annotation",
            true,
            args(|a| a.min_instances = Some(Scale::Default)),
            Ok(|s| assert!(s.spec.template.metadata.annotations.is_empty())),
        );
        check(
            "--no-traffic pins current traffic",
            true,
            args(|a| {
                a.image = Some("v2".into());
                a.no_traffic = true;
            }),
            Ok(|s| {
                assert_eq!(
                    s.spec.traffic,
                    vec![target(Some("hello-00001-abc"), false, Some(100), None)]
                )
            }),
        );
        check(
            "--no-traffic --tag: a preview at the tag URL",
            true,
            args(|a| {
                a.no_traffic = true;
                a.tag = Some("blue".into());
            }),
            Ok(|s| {
                let rev = s.spec.template.metadata.name.as_str();
                assert!(rev.starts_with("hello-00002-"), "{rev}");
                assert_eq!(
                    s.spec.traffic,
                    vec![
                        target(Some("hello-00001-abc"), false, Some(100), None),
                        target(Some(rev), false, Some(0), Some("blue")),
                    ]
                )
            }),
        );
        check(
            "--tag on a new service adds the default route",
            false,
            args(|a| {
                a.image = Some("img".into());
                a.tag = Some("blue".into());
            }),
            Ok(|s| {
                let rev = s.spec.template.metadata.name.as_str();
                assert!(rev.starts_with("hello-00001-"), "{rev}");
                assert_eq!(
                    s.spec.traffic,
                    vec![
                        target(None, true, Some(100), None),
                        target(Some(rev), false, Some(0), Some("blue")),
                    ]
                )
            }),
        );
        // Errors: nothing is sent.
        let errors: &[(&str, bool, DeployArgs, &str)] = &[
            ("new without image", false, args(|_| {}), "pass --image"),
            (
                "new with --no-traffic",
                false,
                args(|a| {
                    a.image = Some("i".into());
                    a.no_traffic = true;
                }),
                "--no-traffic cannot be used when creating",
            ),
            (
                "bad cpu",
                true,
                args(|a| a.cpu = Some("lots".into())),
                "invalid cpu",
            ),
            (
                "bad memory",
                true,
                args(|a| a.memory = Some("1Xi".into())),
                "invalid size",
            ),
            (
                "small memory",
                true,
                args(|a| a.memory = Some("1Mi".into())),
                "at least 128Mi",
            ),
            (
                "bad timeout",
                true,
                args(|a| a.timeout = Some("soon".into())),
                "invalid duration",
            ),
            (
                "sub-second timeout",
                true,
                args(|a| a.timeout = Some("1500ms".into())),
                "whole seconds",
            ),
            (
                "timeout too long",
                true,
                args(|a| a.timeout = Some("2h".into())),
                "invalid timeout",
            ),
            (
                "concurrency",
                true,
                args(|a| a.concurrency = Some(5000)),
                "invalid concurrency",
            ),
            (
                "min above max",
                true,
                args(|a| a.max_instances = Some(Scale::N(0))),
                "max-instances",
            ),
            ("port", true, args(|a| a.port = Some(70000)), "invalid port"),
            (
                "env syntax",
                true,
                args(|a| a.set_env_vars = Some("NOVALUE".into())),
                "KEY=VALUE",
            ),
            (
                "env name",
                true,
                args(|a| a.update_env_vars = Some("1X=2".into())),
                "invalid env var name",
            ),
            (
                "reserved env",
                true,
                args(|a| a.update_env_vars = Some("PORT=1".into())),
                "reserved",
            ),
            (
                "empty image",
                true,
                args(|a| a.image = Some(" ".into())),
                "--image is empty",
            ),
        ];
        for (what, exists, a, part) in errors {
            check(what, *exists, a.clone(), Err(part));
        }
    }

    #[test]
    fn no_traffic_on_a_service_without_traffic() {
        let mut old = existing();
        old.status = Some(ServiceStatus::default());
        let a = args(|a| a.no_traffic = true);
        let e = build_service(Some(&old), "default", &a, &a.changes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("serves no traffic yet"), "{e}");
    }

    #[test]
    fn pins() {
        type Case = (&'static str, Vec<TrafficTarget>, Option<Vec<TrafficTarget>>);
        let cases: Vec<Case> = vec![
            (
                "split with a tag",
                vec![
                    target(Some("r1"), false, Some(30), Some("old")),
                    target(Some("r2"), true, Some(70), None),
                ],
                Some(vec![
                    target(Some("r1"), false, Some(30), Some("old")),
                    target(Some("r2"), false, Some(70), None),
                ]),
            ),
            (
                "latest without a name resolves to the latest ready",
                vec![target(None, true, Some(100), None)],
                Some(vec![target(Some("ready"), false, Some(100), None)]),
            ),
            ("nothing", vec![], None),
        ];
        for (what, cur, want) in cases {
            let got = pin_traffic("hello", &cur, Some("ready")).ok();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn tags() {
        type Case = (&'static str, Vec<TrafficTarget>, Vec<TrafficTarget>);
        let blue = || target(Some("r2"), false, Some(0), Some("blue"));
        let cases: Vec<Case> = vec![
            (
                "empty gets the default route",
                vec![],
                vec![target(None, true, Some(100), None), blue()],
            ),
            (
                "a 0% target with the tag is replaced",
                vec![
                    target(None, true, Some(100), None),
                    target(Some("r1"), false, Some(0), Some("blue")),
                    target(Some("r1"), false, None, Some("green")),
                ],
                vec![
                    target(None, true, Some(100), None),
                    target(Some("r1"), false, None, Some("green")),
                    blue(),
                ],
            ),
            (
                "a serving target with the tag keeps its traffic",
                vec![
                    target(Some("r1"), false, Some(60), Some("blue")),
                    target(None, true, Some(40), None),
                ],
                vec![
                    target(Some("r1"), false, Some(60), None),
                    target(None, true, Some(40), None),
                    blue(),
                ],
            ),
        ];
        for (what, mut cur, want) in cases {
            add_tag(&mut cur, "blue", "r2");
            assert_eq!(cur, want, "{what}");
        }
    }

    fn with_status(gen: u64, observed: u64, ready: Option<(&str, Option<&str>)>) -> Service {
        let mut s = existing();
        s.metadata.generation = gen;
        let st = s.status.as_mut().unwrap();
        st.observed_generation = observed;
        if let Some((status, msg)) = ready {
            st.conditions
                .push(Condition::new("Ready", status, None, msg.map(String::from)));
        }
        s
    }

    #[test]
    fn settles() {
        type Case = (&'static str, Service, u64, Option<Result<(), &'static str>>);
        let cases: &[Case] = &[
            ("no status", Service::default(), 1, None),
            (
                "old generation",
                with_status(2, 1, Some(("True", None))),
                2,
                None,
            ),
            ("no Ready", with_status(2, 2, None), 2, None),
            (
                "unknown",
                with_status(2, 2, Some(("Unknown", None))),
                2,
                None,
            ),
            (
                "ready",
                with_status(2, 2, Some(("True", None))),
                2,
                Some(Ok(())),
            ),
            (
                "failed",
                with_status(2, 3, Some(("False", Some("image \"x\" not found")))),
                2,
                Some(Err("service hello is not ready: image \"x\" not found")),
            ),
        ];
        for (what, svc, gen, want) in cases {
            let got = settled(svc, *gen).map(|r| r.map_err(|e| e.to_string()));
            let want = want.map(|r| r.map_err(String::from));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn deployed_messages() {
        let mut s = existing();
        let st = s.status.as_mut().unwrap();
        st.latest_created_revision_name = Some("hello-00002-xyz".into());
        st.latest_ready_revision_name = Some("hello-00002-xyz".into());
        st.traffic = vec![
            target(Some("hello-00001-abc"), false, Some(100), None),
            TrafficTarget {
                url: Some("http://blue---hello.localhost:8080".into()),
                ..target(Some("hello-00002-xyz"), true, Some(0), Some("blue"))
            },
        ];
        assert_eq!(
            deployed_lines(&s, Some("blue")),
            vec![
                "Service [hello] revision [hello-00002-xyz] has been deployed and is serving 0 percent of traffic.",
                "The revision can be reached directly at http://blue---hello.localhost:8080",
                "Service URL: http://hello.localhost:8080",
            ]
        );
        assert_eq!(
            deployed_lines(&existing(), None),
            vec![
                "Service [hello] revision [hello-00001-abc] has been deployed and is serving 100 percent of traffic.",
                "Service URL: http://hello.localhost:8080",
            ]
        );
    }

    #[test]
    fn lists() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("a", &["a"]),
            ("a,b", &["a", "b"]),
            ("^:^a,b:c", &["a,b", "c"]),
            ("^^a", &["^^a"]),
        ];
        for (s, want) in cases {
            assert_eq!(split_list(s), *want, "{s}");
        }
    }
}
