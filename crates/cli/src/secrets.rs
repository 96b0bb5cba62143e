//! `skiff secrets create|list|describe|delete` and `skiff secrets versions
//! add|list|describe|access|enable|disable|destroy`, in gcloud's `secrets` shape, over the
//! Secret Manager v1 API the server speaks. `versions access` writes the payload to stdout
//! byte for byte (nothing added), as `gcloud secrets versions access` does.

use crate::api::{encode, Api};
use crate::output::{key_values, print_machine, print_table, DescribeFormat, ListFormat};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Secret Manager's limit on one version's payload.
const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum SecretsCommand {
    /// Create a secret, with a first version from --data-file
    Create {
        #[arg(value_name = "NAME")]
        name: String,
        /// The first version's value: a file, or - for standard input
        #[arg(long, value_name = "PATH")]
        data_file: Option<PathBuf>,
        /// Labels, KEY=VALUE,...
        #[arg(long, value_name = "KEY=VALUE,...")]
        labels: Option<String>,
    },
    /// List the project's secrets
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a secret (never its value)
    Describe {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Delete a secret and all its versions
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Add, list, read, enable, disable and destroy a secret's versions
    Versions {
        #[command(subcommand)]
        command: VersionsCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum VersionsCommand {
    /// Add a version to a secret (it becomes latest)
    Add {
        /// The secret
        #[arg(value_name = "NAME")]
        secret: String,
        /// The value: a file, or - for standard input
        #[arg(long, value_name = "PATH")]
        data_file: PathBuf,
    },
    /// List a secret's versions, newest first
    List {
        #[arg(value_name = "NAME")]
        secret: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Show a version (never its value)
    Describe {
        /// A version number, or latest
        #[arg(value_name = "VERSION")]
        version: String,
        #[arg(long, value_name = "NAME")]
        secret: String,
        #[arg(long, value_name = "FORMAT")]
        format: Option<DescribeFormat>,
    },
    /// Print a version's value to standard output
    Access {
        /// A version number, or latest
        #[arg(value_name = "VERSION")]
        version: String,
        #[arg(long, value_name = "NAME")]
        secret: String,
    },
    /// Enable a disabled version
    Enable {
        #[arg(value_name = "VERSION")]
        version: String,
        #[arg(long, value_name = "NAME")]
        secret: String,
    },
    /// Disable a version: it cannot be read, and latest skips it
    Disable {
        #[arg(value_name = "VERSION")]
        version: String,
        #[arg(long, value_name = "NAME")]
        secret: String,
    },
    /// Destroy a version's value for good
    Destroy {
        #[arg(value_name = "VERSION")]
        version: String,
        #[arg(long, value_name = "NAME")]
        secret: String,
    },
}

fn secrets_path(api: &Api) -> String {
    format!("/v1/projects/{}/secrets", encode(&api.project))
}

fn secret_path(api: &Api, name: &str) -> String {
    format!("{}/{}", secrets_path(api), encode(name))
}

/// Reads a value from a file or (`-`) standard input, checking Secret Manager's limits first,
/// so that a bad value is refused before anything is created.
fn read_data(path: &std::path::Path) -> Result<Vec<u8>> {
    let data = if path.as_os_str() == "-" {
        let mut d = Vec::new();
        std::io::stdin()
            .read_to_end(&mut d)
            .context("cannot read the secret's value from standard input")?;
        d
    } else {
        std::fs::read(path)
            .map_err(|e| anyhow!("cannot read --data-file {}: {e}", path.display()))?
    };
    if data.is_empty() {
        bail!("the secret's value is empty: give at least one byte in --data-file");
    }
    if data.len() > MAX_PAYLOAD {
        bail!(
            "the secret's value is {} bytes: a version holds at most {MAX_PAYLOAD} bytes (64 KiB)",
            data.len()
        );
    }
    Ok(data)
}

fn add_version(api: &Api, secret: &str, data: &[u8]) -> Result<Value> {
    let body = json!({"payload": {
        "data": base64::engine::general_purpose::STANDARD.encode(data),
        "dataCrc32c": crc32c::crc32c(data).to_string(),
    }});
    api.send_json(
        Method::POST,
        &format!("{}:addVersion", secret_path(api, secret)),
        &body,
    )
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid --labels entry {kv:?}: use KEY=VALUE,..."))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The last segment of a resource name: `projects/p/secrets/s/versions/3` → `3`.
fn last(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_string()
}

fn version_path(api: &Api, secret: &str, version: &str) -> String {
    format!("{}/versions/{}", secret_path(api, secret), encode(version))
}

pub fn run(api: &Api, cmd: SecretsCommand) -> Result<()> {
    match cmd {
        SecretsCommand::Create {
            name,
            data_file,
            labels,
        } => {
            let labels = labels.as_deref().map(parse_labels).transpose()?;
            let data = data_file.as_deref().map(read_data).transpose()?;
            let body =
                json!({"replication": {"automatic": {}}, "labels": labels.unwrap_or_default()});
            let _: Value = api
                .send(
                    api.request(Method::POST, &secrets_path(api))
                        .query(&[("secretId", name.as_str())])
                        .json(&body),
                )?
                .json()
                .unwrap_or(Value::Null);
            eprintln!("Created secret [{name}].");
            if let Some(data) = data {
                let v = add_version(api, &name, &data)?;
                eprintln!(
                    "Created version [{}] of the secret [{name}].",
                    last(v["name"].as_str().unwrap_or_default())
                );
            }
            Ok(())
        }
        SecretsCommand::List { format } => {
            let v: Value = api.get(&secrets_path(api), &[])?;
            let items = v["secrets"].as_array().cloned().unwrap_or_default();
            if let Some(f) = format {
                return print_machine(&items, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|s| {
                    vec![
                        last(s["name"].as_str().unwrap_or_default()),
                        s["createTime"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("Listed 0 items.");
            } else {
                print_table(&["NAME", "CREATED"], &rows);
            }
            Ok(())
        }
        SecretsCommand::Describe { name, format } => {
            let s: Value = api.get(&secret_path(api, &name), &[])?;
            if let Some(f) = format {
                return print_machine(&s, f == DescribeFormat::Yaml);
            }
            let versions: Value = api.get(&format!("{}/versions", secret_path(api, &name)), &[])?;
            let labels = s["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            print!(
                "{}",
                key_values(&[
                    ("name", s["name"].as_str().unwrap_or_default().to_string()),
                    (
                        "createTime",
                        s["createTime"].as_str().unwrap_or_default().to_string()
                    ),
                    ("labels", labels),
                    (
                        "versions",
                        versions["totalSize"].as_u64().unwrap_or(0).to_string()
                    ),
                ])
            );
            Ok(())
        }
        SecretsCommand::Delete { name } => {
            api.delete(&secret_path(api, &name))?;
            eprintln!("Deleted secret [{name}].");
            Ok(())
        }
        SecretsCommand::Versions { command } => versions(api, command),
    }
}

fn versions(api: &Api, cmd: VersionsCommand) -> Result<()> {
    match cmd {
        VersionsCommand::Add { secret, data_file } => {
            let data = read_data(&data_file)?;
            let v = add_version(api, &secret, &data)?;
            eprintln!(
                "Created version [{}] of the secret [{secret}].",
                last(v["name"].as_str().unwrap_or_default())
            );
            Ok(())
        }
        VersionsCommand::List { secret, format } => {
            let v: Value = api.get(&format!("{}/versions", secret_path(api, &secret)), &[])?;
            let items = v["versions"].as_array().cloned().unwrap_or_default();
            if let Some(f) = format {
                return print_machine(&items, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|s| {
                    vec![
                        last(s["name"].as_str().unwrap_or_default()),
                        s["state"].as_str().unwrap_or_default().to_lowercase(),
                        s["createTime"].as_str().unwrap_or_default().to_string(),
                        s["destroyTime"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("Listed 0 items.");
            } else {
                print_table(&["NAME", "STATE", "CREATED", "DESTROYED"], &rows);
            }
            Ok(())
        }
        VersionsCommand::Describe {
            version,
            secret,
            format,
        } => {
            let v: Value = api.get(&version_path(api, &secret, &version), &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == DescribeFormat::Yaml);
            }
            print!(
                "{}",
                key_values(&[
                    ("name", v["name"].as_str().unwrap_or_default().to_string()),
                    ("state", v["state"].as_str().unwrap_or_default().to_string()),
                    (
                        "createTime",
                        v["createTime"].as_str().unwrap_or_default().to_string()
                    ),
                ])
            );
            Ok(())
        }
        VersionsCommand::Access { version, secret } => {
            let v: Value = api.get(
                &format!("{}:access", version_path(api, &secret, &version)),
                &[],
            )?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["payload"]["data"].as_str().unwrap_or_default())
                .map_err(|_| anyhow!("the server sent a value that is not base64"))?;
            if let Some(sum) = v["payload"]["dataCrc32c"].as_str() {
                if sum != crc32c::crc32c(&data).to_string() {
                    bail!("the value's CRC32C does not match the server's: it was corrupted on its way; try again");
                }
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&data)
                .and_then(|_| out.flush())
                .context("cannot write the value to standard output")?;
            Ok(())
        }
        VersionsCommand::Enable { version, secret } => state(api, &secret, &version, "enable"),
        VersionsCommand::Disable { version, secret } => state(api, &secret, &version, "disable"),
        VersionsCommand::Destroy { version, secret } => state(api, &secret, &version, "destroy"),
    }
}

fn state(api: &Api, secret: &str, version: &str, action: &str) -> Result<()> {
    let v: Value = api.send_json(
        Method::POST,
        &format!("{}:{action}", version_path(api, secret, version)),
        &json!({}),
    )?;
    let past = match action {
        "enable" => "Enabled",
        "disable" => "Disabled",
        _ => "Destroyed",
    };
    eprintln!(
        "{past} version [{}] of the secret [{secret}].",
        last(v["name"].as_str().unwrap_or_default())
    );
    Ok(())
}
