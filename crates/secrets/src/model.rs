//! Secret Manager v1's JSON objects, as its REST API and gcloud exchange them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `Secret`: `name` is `projects/P/secrets/S`; replication is always automatic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub name: String,
    pub replication: Replication,
    /// RFC 3339.
    pub create_time: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub etag: String,
}

impl Secret {
    pub(crate) fn new(
        ns: &str,
        id: &str,
        labels: BTreeMap<String, String>,
        created: String,
    ) -> Self {
        Secret {
            name: format!("projects/{ns}/secrets/{id}"),
            replication: Replication::default(),
            etag: format!("\"{}\"", etag(&created)),
            create_time: created,
            labels,
        }
    }
    /// The secret's id, the last segment of its name.
    pub fn id(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }
}

/// `replication: {automatic: {}}` (Skiff keeps one copy; this is the shape gcloud expects).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replication {
    #[serde(default)]
    pub automatic: serde_json::Map<String, serde_json::Value>,
}

/// A version's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VersionState {
    Enabled,
    Disabled,
    Destroyed,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }
    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "ENABLED" => VersionState::Enabled,
            "DISABLED" => VersionState::Disabled,
            _ => VersionState::Destroyed,
        }
    }
}

/// `SecretVersion`: `name` is `projects/P/secrets/S/versions/N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersion {
    pub name: String,
    pub create_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_time: Option<String>,
    pub state: VersionState,
    pub replication_status: Replication,
    pub etag: String,
    #[serde(default)]
    pub client_specified_payload_checksum: bool,
    /// The version number (not part of Secret Manager's object).
    #[serde(skip)]
    pub version: u64,
}

impl SecretVersion {
    pub(crate) fn new(
        ns: &str,
        id: &str,
        version: u64,
        state: VersionState,
        created: String,
        destroyed: Option<String>,
        checksum: bool,
    ) -> Self {
        SecretVersion {
            name: format!("projects/{ns}/secrets/{id}/versions/{version}"),
            etag: format!("\"{}\"", etag(&format!("{created}{}", state.as_str()))),
            create_time: created,
            destroy_time: destroyed,
            state,
            replication_status: Replication::default(),
            client_specified_payload_checksum: checksum,
            version,
        }
    }
}

/// `SecretPayload`: base64 `data` and its CRC32C as a decimal string (int64 in JSON).
/// Its `Debug` never shows the data.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    #[serde(default)]
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_crc32c: Option<String>,
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Payload { data: <redacted> }")
    }
}

/// `AccessSecretVersionResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessResponse {
    pub name: String,
    pub payload: Payload,
}

impl AccessResponse {
    /// The answer for version `n` of `projects/ns/secrets/id` holding `data`.
    pub fn new(ns: &str, id: &str, n: u64, data: &[u8]) -> Self {
        use base64::Engine;
        AccessResponse {
            name: format!("projects/{ns}/secrets/{id}/versions/{n}"),
            payload: Payload {
                data: base64::engine::general_purpose::STANDARD.encode(data),
                data_crc32c: Some(crc32c::crc32c(data).to_string()),
            },
        }
    }
}

/// `ListSecretsResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSecretsResponse {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<Secret>,
    pub total_size: usize,
}

/// `ListSecretVersionsResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListVersionsResponse {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<SecretVersion>,
    pub total_size: usize,
}

/// A short stable tag for an object's state.
fn etag(s: &str) -> String {
    format!("{:08x}", crc32c::crc32c(s.as_bytes()))
}
