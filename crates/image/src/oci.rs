//! The slice of the OCI image spec (and Docker's compatible schema 2) that the store reads and
//! writes: descriptors, indexes, manifests and image configs, plus platform selection.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Annotation holding the reference (a tag, or a full `NAME:TAG`) in an OCI layout's index.
pub(crate) const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and `docker save` (v25+) put the full image name in.
pub(crate) const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub(crate) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// True when the descriptor names an image manifest (or does not say what it names).
    pub(crate) fn is_image_manifest(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            None | Some(MT_OCI_MANIFEST) | Some(MT_DOCKER_MANIFEST)
        )
    }

    /// True for a non-distributable ("foreign") layer, which a registry need not hold.
    pub(crate) fn is_non_distributable(&self) -> bool {
        self.media_type.as_deref().is_some_and(|t| {
            t.starts_with("application/vnd.oci.image.layer.nondistributable.")
                || t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        })
    }

    pub(crate) fn is_index(&self) -> bool {
        matches!(
            self.media_type.as_deref(),
            Some(MT_OCI_INDEX) | Some(MT_DOCKER_LIST)
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (`index.json` of a layout, or a multi-platform list).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest. Field order matters: synthesized manifests serialize in this order so
/// their digest is stable across imports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config the store uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

impl ImageConfig {
    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs.as_ref().map(|r| &r.diff_ids[..]).unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The execution parameters of an image config (`config` in the JSON).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ContainerConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

impl ContainerConfig {
    /// TCP ports (`8080/tcp` or bare `8080`), sorted and without duplicates.
    pub(crate) fn tcp_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .exposed_ports
            .iter()
            .flat_map(|m| m.keys())
            .filter_map(|k| {
                let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
                (proto.eq_ignore_ascii_case("tcp")).then(|| port.parse().ok())?
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// The OCI architecture name of the machine this runs on.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// True for index entries that are not runnable images (buildkit attestations).
fn is_attestation(d: &Descriptor) -> bool {
    d.annotation("vnd.docker.reference.type").is_some()
        || d.platform.as_ref().is_some_and(|p| p.os == "unknown")
}

/// Pick the manifest for this machine (linux/<host arch>) from index entries. An entry is
/// never taken for another platform, even when it is the only one, as containerd's and
/// Docker's pulls refuse it ("no match for platform in manifest"); the only entry without a
/// `platform` field (what umoci and skopeo write into a single-image OCI layout) is taken, as
/// containerd's `images.Manifest` takes a child whose descriptor names no platform.
/// The error lists the platforms on offer.
pub(crate) fn choose_platform(descs: &[Descriptor]) -> Result<&Descriptor, String> {
    let runnable: Vec<&Descriptor> = descs.iter().filter(|d| !is_attestation(d)).collect();
    if let [only] = runnable.as_slice() {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let arch = host_arch();
    if let Some(d) = runnable.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    }) {
        return Ok(d);
    }
    let offered: Vec<String> = runnable
        .iter()
        .map(|d| match &d.platform {
            Some(p) => p.to_string(),
            None => format!("{} (no platform)", d.digest),
        })
        .collect();
    Err(format!(
        "the index has no linux/{arch} image (it offers: {}); export the image for linux/{arch}",
        if offered.is_empty() {
            "nothing".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str) -> Descriptor {
        Descriptor {
            media_type: Some(MT_OCI_MANIFEST.into()),
            digest: format!("sha256:{os}{arch}"),
            size: 1,
            annotations: None,
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: None,
            }),
        }
    }

    #[test]
    fn platform_choice() {
        let host = host_arch();
        let list = vec![
            desc("linux", "s390x"),
            desc("linux", host),
            desc("unknown", "unknown"),
        ];
        assert_eq!(
            choose_platform(&list).unwrap().digest,
            format!("sha256:linux{host}")
        );
        // The only runnable entry, for another platform: refused as two entries would be.
        let foreign = if host == "s390x" { "riscv64" } else { "s390x" };
        let only = vec![desc("linux", foreign), desc("unknown", "unknown")];
        assert_eq!(
            choose_platform(&only).unwrap_err(),
            format!(
                "the index has no linux/{host} image (it offers: linux/{foreign}); export the image for linux/{host}"
            )
        );
        let only_host = vec![desc("linux", host)];
        assert_eq!(
            choose_platform(&only_host).unwrap().digest,
            format!("sha256:linux{host}")
        );
        // The only entry without a platform field is taken (single-image OCI layouts).
        let mut bare = desc("linux", host);
        bare.platform = None;
        bare.digest = "sha256:bare".into();
        assert_eq!(
            choose_platform(std::slice::from_ref(&bare)).unwrap().digest,
            "sha256:bare"
        );
        let none = vec![desc("linux", "s390x"), desc("windows", "mips")];
        let err = choose_platform(&none).unwrap_err();
        assert!(
            err.contains("linux/s390x") && err.contains("windows/mips"),
            "{err}"
        );
    }

    #[test]
    fn ports_keep_tcp_only() {
        let cfg: ContainerConfig = serde_json::from_str(
            r#"{"ExposedPorts":{"8080/tcp":{},"53/udp":{},"9090":{},"8080":{},"x/tcp":{}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.tcp_ports(), vec![8080, 9090]);
    }
}
