//! `skiff gcloud configure`: writes a named Google Cloud CLI configuration that sends
//! gcloud's Cloud Run commands to this Skiff server.
//!
//! gcloud puts the region in front of the endpoint's host for regional calls
//! (`us-central1-run.skiff`), a name no resolver knows. So the configuration makes Skiff's API
//! gcloud's HTTP proxy as well as its Cloud Run endpoint: every request then arrives at the API
//! in absolute form (`GET http://us-central1-run.skiff:PORT/apis/...`), which the API routes by
//! path, whatever the host. Resource Manager (the project lookup `gcloud run ... replace`
//! makes), Cloud Logging (log reads), and Cloud Storage, Artifact Registry and Cloud Build
//! (`gcloud run deploy --source`) point at Skiff the same way, and the API refuses `CONNECT`, so gcloud talks to
//! nothing but Skiff. Nothing on the machine (DNS, hosts file) changes. The properties file
//! is written directly (gcloud reads `CONFIG_DIR/configurations/config_NAME`), so gcloud need
//! not be installed yet.

use crate::api::Api;
use crate::GlobalArgs;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Host name gcloud is given as the Cloud Run endpoint. It is never resolved: requests go to
/// the proxy, which is Skiff's API itself.
pub const ENDPOINT_HOST: &str = "run.skiff";
/// Host name gcloud is given for Resource Manager (project lookups), answered by Skiff too.
pub const RESOURCE_MANAGER_HOST: &str = "cloudresourcemanager.skiff";
/// Host name gcloud is given for Cloud Logging (`gcloud run services logs read`, `gcloud
/// logging read`), answered by Skiff too.
pub const LOGGING_HOST: &str = "logging.skiff";
/// Host name gcloud is given for Secret Manager (`gcloud secrets ...`), answered by Skiff too.
pub const SECRET_MANAGER_HOST: &str = "secretmanager.skiff";
/// The host name gcloud's `pubsub` endpoint is set to (`gcloud pubsub ...`): the control API
/// serves the Pub/Sub REST API too, behind the admin token.
pub const PUBSUB_HOST: &str = "pubsub.skiff";
/// The host name gcloud's `eventarc` endpoint is set to (`gcloud eventarc triggers ...`): the
/// control API serves the Eventarc v1 REST API too, behind the admin token.
pub const EVENTARC_HOST: &str = "eventarc.skiff";
/// The host names gcloud's `storage`, `artifactregistry` and `cloudbuild` endpoints are set to:
/// `gcloud run deploy --source` and `gcloud run jobs deploy --source` stage the source in a
/// bucket, check the `cloud-run-source-deploy` repository and follow the build, all answered
/// by the control API (from Skiff's own builds).
pub const STORAGE_HOST: &str = "storage.skiff";
/// See [`STORAGE_HOST`].
pub const ARTIFACT_REGISTRY_HOST: &str = "artifactregistry.skiff";
/// See [`STORAGE_HOST`].
pub const CLOUD_BUILD_HOST: &str = "cloudbuild.skiff";

#[derive(clap::Subcommand, Debug)]
pub enum GcloudCommand {
    /// Write a gcloud configuration that points gcloud's Cloud Run commands at this server
    Configure(ConfigureArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConfigureArgs {
    /// Name of the gcloud configuration to create or update
    #[arg(long, default_value = "skiff", value_name = "NAME")]
    pub configuration: String,
    /// Also make it gcloud's active configuration
    #[arg(long)]
    pub activate: bool,
}

/// Checks a configuration name the way gcloud does.
pub fn validate_configuration_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!("invalid configuration name {name:?}: gcloud configuration names start with a lower-case letter and hold only lower-case letters, digits and '-'");
    }
    Ok(())
}

/// gcloud's configuration directory: `$CLOUDSDK_CONFIG`, else `~/.config/gcloud`.
fn gcloud_config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CLOUDSDK_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config/gcloud")),
        None => bail!("cannot find gcloud's configuration directory: set CLOUDSDK_CONFIG or HOME"),
    }
}

/// `(host, port)` of an `http://` API URL: where gcloud's proxy settings point.
pub fn proxy_of(api_url: &str) -> Result<(String, u16)> {
    let url = reqwest::Url::parse(api_url.trim())
        .map_err(|e| anyhow!("invalid --api-url {api_url:?}: {e}"))?;
    if url.scheme() != "http" {
        bail!("gcloud reaches Skiff through its API as an HTTP proxy, which needs an http:// --api-url, not {api_url:?}");
    }
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("invalid --api-url {api_url:?}: it names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    Ok((host, port))
}

/// The properties the configuration sets, as `(section, key, value)`.
pub fn properties(
    project: &str,
    host: &str,
    port: u16,
    token_file: &Path,
) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("core", "project", project.to_string()),
        // Skiff has no service-usage API to ask whether Cloud Run is enabled.
        ("core", "should_prompt_to_enable_api", "false".into()),
        // No probe of a GCE metadata server, no usage reports: gcloud talks only to Skiff.
        ("core", "check_gce_metadata", "false".into()),
        ("core", "disable_usage_reporting", "true".into()),
        ("component_manager", "disable_update_check", "true".into()),
        ("survey", "disable_prompts", "true".into()),
        (
            "api_endpoint_overrides",
            "run",
            format!("http://{ENDPOINT_HOST}:{port}/"),
        ),
        // `services replace` and `jobs replace` look the project up before they send a file
        // that names its namespace.
        (
            "api_endpoint_overrides",
            "cloudresourcemanager",
            format!("http://{RESOURCE_MANAGER_HOST}:{port}/"),
        ),
        // `run services logs read`, `run jobs logs read` and `logging read` list entries.
        (
            "api_endpoint_overrides",
            "logging",
            format!("http://{LOGGING_HOST}:{port}/"),
        ),
        // `gcloud secrets ...` create, version and read secrets.
        (
            "api_endpoint_overrides",
            "secretmanager",
            format!("http://{SECRET_MANAGER_HOST}:{port}/"),
        ),
        // `gcloud pubsub topics|subscriptions|snapshots ...`.
        (
            "api_endpoint_overrides",
            "pubsub",
            format!("http://{PUBSUB_HOST}:{port}/"),
        ),
        // `gcloud eventarc triggers create|list|describe|delete`.
        (
            "api_endpoint_overrides",
            "eventarc",
            format!("http://{EVENTARC_HOST}:{port}/"),
        ),
        // `run deploy --source` and `run jobs deploy --source`: the staging bucket, the
        // image repository and the build.
        (
            "api_endpoint_overrides",
            "storage",
            format!("http://{STORAGE_HOST}:{port}/"),
        ),
        (
            "api_endpoint_overrides",
            "artifactregistry",
            format!("http://{ARTIFACT_REGISTRY_HOST}:{port}/"),
        ),
        (
            "api_endpoint_overrides",
            "cloudbuild",
            format!("http://{CLOUD_BUILD_HOST}:{port}/"),
        ),
        ("proxy", "type", "http".into()),
        ("proxy", "address", host.to_string()),
        ("proxy", "port", port.to_string()),
        (
            "auth",
            "access_token_file",
            token_file.display().to_string(),
        ),
        ("run", "region", skiff_model::REGION.into()),
    ]
}

/// Sets `key = value` in `[section]` of an INI text (gcloud's properties format), keeping
/// every other line as it was; missing keys are added at the end of their section, missing
/// sections at the end.
pub fn set_ini(text: &str, props: &[(&str, &str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for (section, key, value) in props {
        let entry = format!("{key} = {value}");
        let mut current: Option<String> = None;
        // Index of the last line of the wanted section, and of the key's line in it.
        let mut section_end = None;
        let mut found = None;
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with('[') && t.ends_with(']') {
                current = Some(t[1..t.len() - 1].trim().to_string());
                if current.as_deref() == Some(section) {
                    section_end = Some(i);
                }
                continue;
            }
            if current.as_deref() != Some(section) {
                continue;
            }
            if !t.is_empty() {
                section_end = Some(i);
            }
            let k = t.split_once('=').map(|(k, _)| k.trim());
            if k == Some(key) && !t.starts_with('#') && !t.starts_with(';') {
                found = Some(i);
            }
        }
        match (found, section_end) {
            (Some(i), _) => lines[i] = entry,
            (None, Some(i)) => lines.insert(i + 1, entry),
            (None, None) => {
                if lines.last().is_some_and(|l| !l.trim().is_empty()) {
                    lines.push(String::new());
                }
                lines.push(format!("[{section}]"));
                lines.push(entry);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Writes `contents` to `path` with mode 0600, replacing it atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("skiff")
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The token file gcloud reads: a copy of `--token` in gcloud's directory when one was
/// given, else the server's own `DATA_DIR/admin.token`.
fn token_file(global: &GlobalArgs, gcloud_dir: &Path, name: &str) -> Result<PathBuf> {
    if let Some(t) = global
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let dir = gcloud_dir.join("skiff");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{name}.token"));
        write_private(&path, format!("{t}\n").as_bytes())?;
        return Ok(path);
    }
    let path = global.data_dir().join("admin.token");
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(path),
        Ok(_) => bail!(
            "the admin token file {} is empty: pass --token (or set SKIFF_TOKEN), or restart `skiff server` to write a new one",
            path.display()
        ),
        Err(e) => bail!(
            "cannot read the admin token from {} ({e}): pass --token (or set SKIFF_TOKEN), or give the server's --data-dir",
            path.display()
        ),
    }
}

pub fn run(api: &Api, global: &GlobalArgs, cmd: GcloudCommand) -> Result<()> {
    let GcloudCommand::Configure(args) = cmd;
    let name = args.configuration.as_str();
    validate_configuration_name(name)?;
    let (host, port) = proxy_of(&global.api_url)?;
    // The server must answer with this token, so that gcloud's first command works.
    let _: Value = api.get(
        &format!(
            "/v1/projects/{}/locations/-/services",
            crate::api::encode(&global.project)
        ),
        &[],
    )?;
    let dir = gcloud_config_dir()?;
    let configs = dir.join("configurations");
    std::fs::create_dir_all(&configs)
        .with_context(|| format!("cannot create {}", configs.display()))?;
    let token = token_file(global, &dir, name)?;
    let path = configs.join(format!("config_{name}"));
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = set_ini(
        old.as_deref().unwrap_or(""),
        &properties(&global.project, &host, port, &token),
    );
    // The file names the token's path, not the token; 0600 all the same, as gcloud does.
    write_private(&path, text.as_bytes())?;
    if args.activate {
        std::fs::write(dir.join("active_config"), name)
            .with_context(|| format!("cannot write {}", dir.join("active_config").display()))?;
    }
    println!(
        "{} gcloud configuration [{name}] in {}: project {}, region {}, Cloud Run API and HTTP proxy {host}:{port}, access token from {}.",
        if old.is_some() { "Updated" } else { "Created" },
        path.display(),
        global.project,
        skiff_model::REGION,
        token.display()
    );
    if args.activate {
        println!("It is gcloud's active configuration now:\n  gcloud run services list");
    } else {
        println!(
            "Use it with --configuration:\n  gcloud --configuration {name} run services list\nor for a whole shell:\n  export CLOUDSDK_ACTIVE_CONFIG_NAME={name}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names() {
        for ok in ["skiff", "a", "dev-2"] {
            assert!(validate_configuration_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Skiff", "2a", "-a", "a_b", "NONE", "a.b"] {
            assert!(validate_configuration_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proxies() {
        assert_eq!(
            proxy_of("http://127.0.0.1:8081").unwrap(),
            ("127.0.0.1".into(), 8081)
        );
        assert_eq!(proxy_of("http://h/").unwrap(), ("h".into(), 80));
        assert_eq!(
            proxy_of("http://[::1]:9000/").unwrap(),
            ("::1".into(), 9000)
        );
        let e = proxy_of("https://h:1").unwrap_err().to_string();
        assert!(e.contains("http://"), "{e}");
        assert!(proxy_of("127.0.0.1:8081").is_err());
    }

    #[test]
    fn ini_edits_keep_other_lines() {
        let old = "[core]\naccount = me@example.com\nproject = old\n\n[compute]\nzone = z\n";
        let props = vec![
            ("core", "project", "demo".to_string()),
            ("core", "disable_usage_reporting", "true".to_string()),
            ("proxy", "port", "8081".to_string()),
        ];
        let got = set_ini(old, &props);
        assert_eq!(
            got,
            "[core]\naccount = me@example.com\nproject = demo\ndisable_usage_reporting = true\n\n[compute]\nzone = z\n\n[proxy]\nport = 8081\n"
        );
        // Idempotent.
        assert_eq!(set_ini(&got, &props), got);
        // From nothing.
        assert_eq!(
            set_ini("", &props[..1]),
            "[core]\nproject = demo\n",
            "empty file"
        );
    }

    #[test]
    fn properties_point_at_the_api() {
        let p = properties("demo", "127.0.0.1", 8081, Path::new("/d/admin.token"));
        let get = |s: &str, k: &str| {
            p.iter()
                .find(|(ps, pk, _)| *ps == s && *pk == k)
                .map(|(_, _, v)| v.clone())
        };
        assert_eq!(
            get("api_endpoint_overrides", "run").as_deref(),
            Some("http://run.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "cloudresourcemanager").as_deref(),
            Some("http://cloudresourcemanager.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "logging").as_deref(),
            Some("http://logging.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "secretmanager").as_deref(),
            Some("http://secretmanager.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "storage").as_deref(),
            Some("http://storage.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "artifactregistry").as_deref(),
            Some("http://artifactregistry.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "cloudbuild").as_deref(),
            Some("http://cloudbuild.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "pubsub").as_deref(),
            Some("http://pubsub.skiff:8081/")
        );
        assert_eq!(
            get("api_endpoint_overrides", "eventarc").as_deref(),
            Some("http://eventarc.skiff:8081/")
        );
        assert_eq!(get("proxy", "address").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("proxy", "port").as_deref(), Some("8081"));
        assert_eq!(
            get("auth", "access_token_file").as_deref(),
            Some("/d/admin.token")
        );
        assert_eq!(get("core", "project").as_deref(), Some("demo"));
        assert_eq!(get("run", "region").as_deref(), Some("us-central1"));
    }
}
