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
    },
}

pub fn run(api: &Api, cmd: AuthCommand) -> Result<()> {
    let AuthCommand::PrintIdentityToken { audience } = cmd;
    let v: Value = api.send_json(
        Method::POST,
        "/skiff/v1/identityToken",
        &serde_json::json!({ "audience": audience }),
    )?;
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the Skiff API answered without a token: is --api-url a Skiff server of the same version?"))?;
    println!("{token}");
    Ok(())
}
