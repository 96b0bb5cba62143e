//! `skiff registries login|list|logout`: the server's credentials and connection settings per
//! registry, used when it pulls `HOST[:PORT]/REPO...` images. Login checks the credentials
//! with the registry (as `docker login` does) before the server keeps them.

use crate::api::{encode, Api};
use crate::output::{or_dash, print_machine, print_table, ListFormat};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum RegistriesCommand {
    /// Check credentials with a registry and have the server use them for its pulls
    Login {
        /// The registry: HOST[:PORT]
        #[arg(value_name = "HOST")]
        host: String,
        /// User name (with --password-stdin or --password)
        #[arg(long, short = 'u', value_name = "USER")]
        username: Option<String>,
        /// Read the password (or access token) from standard input
        #[arg(long)]
        password_stdin: bool,
        /// The password (visible to other local users; prefer --password-stdin)
        #[arg(
            long,
            short = 'p',
            value_name = "PASSWORD",
            conflicts_with = "password_stdin"
        )]
        password: Option<String>,
        /// Treat the registry as insecure, as Docker does: HTTPS accepting any certificate,
        /// else plain HTTP (loopback registries without --ca-file are insecure already)
        #[arg(long)]
        insecure: bool,
        /// PEM file of CA certificates to trust for this registry (a path on the server)
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// List the registries the server has settings for
    List {
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Forget a registry's credentials and settings
    Logout {
        #[arg(value_name = "HOST")]
        host: String,
    },
}

pub fn run(api: &Api, cmd: RegistriesCommand) -> Result<()> {
    match cmd {
        RegistriesCommand::Login {
            host,
            username,
            password_stdin,
            password,
            insecure,
            ca_file,
        } => {
            let password = if password_stdin {
                let mut p = String::new();
                std::io::stdin()
                    .read_to_string(&mut p)
                    .context("cannot read the password from standard input")?;
                Some(p.trim_end_matches(['\n', '\r']).to_string())
            } else {
                password
            };
            match (&username, &password) {
                (Some(_), None) => {
                    bail!("--username needs a password: pass --password-stdin (or --password)")
                }
                (None, Some(_)) => bail!("a password needs --username"),
                _ => {}
            }
            let ca_file = match ca_file {
                Some(p) => Some(
                    std::path::absolute(&p)
                        .map_err(|e| anyhow!("invalid --ca-file {}: {e}", p.display()))?,
                ),
                None => None,
            };
            let body = json!({
                "username": username, "password": password,
                "insecure": insecure, "caFile": ca_file,
            });
            let _: Value = api.send_json(
                Method::PUT,
                &format!("/skiff/v1/registries/{}", encode(&host)),
                &body,
            )?;
            eprintln!("Login Succeeded for [{host}].");
            Ok(())
        }
        RegistriesCommand::List { format } => {
            let v: Value = api.get("/skiff/v1/registries", &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let rows: Vec<Vec<String>> = v["registries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    vec![
                        r["host"].as_str().unwrap_or_default().to_string(),
                        or_dash(r["username"].as_str()),
                        insecure_column(
                            r["host"].as_str().unwrap_or_default(),
                            r["insecure"].as_bool() == Some(true),
                            r["caFile"].as_str().is_some(),
                        ),
                        or_dash(r["caFile"].as_str()),
                    ]
                })
                .collect();
            print_table(&["REGISTRY", "USERNAME", "INSECURE", "CA FILE"], &rows);
            Ok(())
        }
        RegistriesCommand::Logout { host } => {
            api.delete(&format!("/skiff/v1/registries/{}", encode(&host)))?;
            eprintln!("Removed login credentials for [{host}].");
            Ok(())
        }
    }
}

/// The INSECURE column of `skiff registries list`: `yes` for a registry marked `--insecure`,
/// `yes (loopback)` for a loopback one without a CA file (insecure by default, as in Docker:
/// HTTPS accepting any certificate, else plain HTTP), `no` for HTTPS with verified
/// certificates.
fn insecure_column(host: &str, insecure: bool, ca_file: bool) -> String {
    if insecure {
        "yes".into()
    } else if !ca_file && skiff_registry::is_loopback(host) {
        "yes (loopback)".into()
    } else {
        "no".into()
    }
}

#[cfg(test)]
mod insecure_tests {
    use super::insecure_column;

    #[test]
    fn loopback_is_insecure_unless_a_ca_file_is_given() {
        assert_eq!(
            insecure_column("127.0.0.1:5000", false, false),
            "yes (loopback)"
        );
        assert_eq!(insecure_column("localhost:5000", false, true), "no");
        assert_eq!(insecure_column("10.0.0.5:5000", true, false), "yes");
        assert_eq!(insecure_column("registry.example.com", false, false), "no");
    }
}
