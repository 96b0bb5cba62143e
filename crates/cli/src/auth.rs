//! `skiff auth print-identity-token`: a token private services accept as `Authorization:
//! Bearer`.

use crate::api::Api;
use anyhow::{anyhow, Result};
use reqwest::Method;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum AuthCommand {
    /// Print an identity token for invoking private services
    PrintIdentityToken {
        /// The service URL the token is for
        #[arg(long, value_name = "URL")]
        audience: Option<String>,
        /// Print a token of this service account instead of the admin's (without --audience,
        /// one that stands for its access token, as the Pub/Sub API takes)
        #[arg(long, value_name = "EMAIL")]
        impersonate_service_account: Option<String>,
    },
}

pub fn run(api: &Api, cmd: AuthCommand) -> Result<()> {
    let AuthCommand::PrintIdentityToken {
        audience,
        impersonate_service_account,
    } = cmd;
    let mut body = serde_json::json!({ "audience": audience });
    if let Some(sa) = impersonate_service_account {
        body["serviceAccount"] = serde_json::json!(sa);
    }
    let v: Value = api.send_json(Method::POST, "/skiff/v1/identityToken", &body)?;
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the Skiff API answered without a token: is --api-url a Skiff server of the same version?"))?;
    println!("{token}");
    Ok(())
}
