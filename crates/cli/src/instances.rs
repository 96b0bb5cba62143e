//! `skiff instances list`: the live instances of the project's services.

use crate::api::Api;
use crate::output::{or_dash, print_machine, print_table, ListFormat};
use anyhow::{anyhow, Result};
use serde::Deserialize;
use serde_json::Value;

#[derive(clap::Subcommand, Debug)]
pub enum InstancesCommand {
    /// List live instances: id, revision, state, start time, requests in flight
    List {
        /// Only the instances of this service
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub revision: String,
    pub state: String,
    pub started_at: Option<String>,
    pub in_flight: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct InstanceList {
    instances: Vec<Instance>,
}

pub fn rows(list: &[Instance]) -> Vec<Vec<String>> {
    list.iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.revision.clone(),
                i.state.clone(),
                or_dash(i.started_at.as_deref()),
                i.in_flight.to_string(),
            ]
        })
        .collect()
}

pub fn run(api: &Api, cmd: InstancesCommand) -> Result<()> {
    let InstancesCommand::List { service, format } = cmd;
    let query: Vec<(&str, &str)> = service
        .as_deref()
        .map(|s| vec![("service", s)])
        .unwrap_or_default();
    let v: Value = api.get(&api.skiff_ns("instances"), &query)?;
    if let Some(f) = format {
        return print_machine(&v, f == ListFormat::Yaml);
    }
    let list: InstanceList = serde_json::from_value(v)
        .map_err(|e| anyhow!("unexpected instance list from the Skiff API: {e}"))?;
    print_table(
        &["ID", "REVISION", "STATE", "STARTED", "IN-FLIGHT"],
        &rows(&list.instances),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table;

    #[test]
    fn table_rows() {
        let list: InstanceList = serde_json::from_value(serde_json::json!({"instances": [
            {"id": "i-1", "service": "a", "revision": "a-00001-x", "state": "ready",
             "startedAt": "2024-01-01T00:00:00Z", "inFlight": 3},
            {"id": "i-22", "service": "a", "revision": "a-00002-y", "state": "starting"}
        ]}))
        .unwrap();
        assert_eq!(
            table(
                &["ID", "REVISION", "STATE", "STARTED", "IN-FLIGHT"],
                &rows(&list.instances)
            ),
            "ID    REVISION   STATE     STARTED               IN-FLIGHT\n\
             i-1   a-00001-x  ready     2024-01-01T00:00:00Z  3\n\
             i-22  a-00002-y  starting  -                     0\n"
        );
    }
}
