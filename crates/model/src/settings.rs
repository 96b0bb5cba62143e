//! `RevisionSettings`: what the serving plane needs to run a revision, derived from (and
//! validated against) a Knative revision template the way Cloud Run reads it.

use crate::{
    parse_cpu, parse_size, InvalidInput, RevisionTemplate, ANN_CPU_THROTTLING, ANN_MAX_SCALE,
    ANN_MIN_SCALE,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_CONCURRENCY: u64 = 80;
pub const MAX_CONCURRENCY: u64 = 1000;
pub const DEFAULT_MAX_INSTANCES: u64 = 100;
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Cloud Run's smallest memory limit.
pub const MIN_MEMORY: u64 = 128 << 20;
/// Processes one instance may hold (a fork bomb stops here).
pub const PIDS_LIMIT: i64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSettings {
    /// The image reference as the user gave it.
    pub image: String,
    pub port: u16,
    pub concurrency: u64,
    pub min_instances: u64,
    pub max_instances: u64,
    pub timeout: Duration,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// The template's `autoscaling.knative.dev/*` annotations, for the autoscaler.
    pub autoscaling: std::collections::BTreeMap<String, String>,
    /// CPU only during requests, billed request-based (Cloud Run's default); `false` with
    /// `run.googleapis.com/cpu-throttling: "false"`: CPU always, billed instance-based.
    #[serde(default = "yes")]
    pub cpu_throttling: bool,
    /// `spec.serviceAccountName`: the identity the instances run as (`None`: the project's
    /// default service account).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether the instances have a network beyond loopback ([`crate::ANN_EGRESS`]).
    #[serde(default = "yes")]
    pub egress: bool,
}

/// Reads [`crate::ANN_EGRESS`] from annotations: `all` (or absent) is `true`, `none` `false`.
pub fn egress_annotation(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<bool, InvalidInput> {
    match annotations.get(crate::ANN_EGRESS).map(|v| v.trim()) {
        None | Some("all") => Ok(true),
        Some("none") => Ok(false),
        Some(v) => Err(InvalidInput::new(format!(
            "invalid annotation {}: {v:?}: use \"all\" or \"none\"",
            crate::ANN_EGRESS
        ))),
    }
}

/// Checks `serviceAccountName`: an email address, as Cloud Run takes it.
pub fn validate_service_account(sa: &str) -> Result<(), InvalidInput> {
    let ok = sa.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty()
            && domain.contains('.')
            && sa
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@.-_".contains(c))
    });
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(format!(
            "invalid service account {sa:?}: give an email like NAME@PROJECT.iam.gserviceaccount.com"
        )))
    }
}

fn yes() -> bool {
    true
}

/// Prefix of the Knative autoscaling annotations.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";

fn scale_annotation(t: &RevisionTemplate, key: &str) -> Result<Option<u64>, InvalidInput> {
    match t.metadata.annotations.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            InvalidInput::new(format!(
                "invalid annotation {key}: {v:?} is not a whole number"
            ))
        }),
    }
}

impl RevisionSettings {
    /// Reads and validates a revision template. Every limit Cloud Run enforces is checked here,
    /// so that nothing invalid is ever stored.
    pub fn from_template(t: &RevisionTemplate) -> Result<Self, InvalidInput> {
        let spec = &t.spec;
        let c = match spec.containers.as_slice() {
            [c] => c,
            [] => return Err(InvalidInput::new("the revision template has no container: give one with an image")),
            _ => {
                return Err(InvalidInput::new(
                    "the revision template has more than one container: Skiff runs one container per instance",
                ))
            }
        };
        if c.image.trim().is_empty() {
            return Err(InvalidInput::new(
                "the container has no image: pass --image NAME[:TAG]",
            ));
        }
        let port = match c.ports.as_slice() {
            [] => DEFAULT_PORT,
            [p] => u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    InvalidInput::new(format!(
                        "invalid port {}: use a port between 1 and 65535",
                        p.container_port
                    ))
                })?,
            _ => {
                return Err(InvalidInput::new(
                    "more than one container port: give exactly one",
                ))
            }
        };
        let concurrency = match spec.container_concurrency {
            None | Some(0) => DEFAULT_CONCURRENCY,
            Some(n) if n <= MAX_CONCURRENCY => n,
            Some(n) => {
                return Err(InvalidInput::new(format!(
                    "invalid concurrency {n}: use a value between 1 and {MAX_CONCURRENCY}"
                )))
            }
        };
        let timeout_secs = spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT_SECS {
            return Err(InvalidInput::new(format!(
                "invalid timeout {timeout_secs}s: use a value between 1s and {MAX_TIMEOUT_SECS}s"
            )));
        }
        let min_instances = scale_annotation(t, ANN_MIN_SCALE)?.unwrap_or(0);
        let max_instances = scale_annotation(t, ANN_MAX_SCALE)?.unwrap_or(DEFAULT_MAX_INSTANCES);
        if max_instances == 0 {
            return Err(InvalidInput::new("invalid max-instances 0: use at least 1"));
        }
        if min_instances > max_instances {
            return Err(InvalidInput::new(format!(
                "min-instances {min_instances} is above max-instances {max_instances}: lower min or raise max"
            )));
        }
        let limits = c.resources.as_ref().map(|r| &r.limits);
        let cpu_millis = match limits.and_then(|l| l.get("cpu")) {
            Some(v) => parse_cpu(v)?,
            None => DEFAULT_CPU_MILLIS,
        };
        let memory_bytes = match limits.and_then(|l| l.get("memory")) {
            Some(v) => parse_size(v)?,
            None => DEFAULT_MEMORY,
        };
        if memory_bytes < MIN_MEMORY {
            return Err(InvalidInput::new(format!(
                "memory limit {memory_bytes} bytes is below the minimum: use at least 128Mi"
            )));
        }
        let mut env = Vec::new();
        for e in &c.env {
            if matches!(
                e.name.as_str(),
                "PORT" | "K_SERVICE" | "K_REVISION" | "K_CONFIGURATION"
            ) {
                return Err(InvalidInput::new(format!(
                    "env var {} is reserved: Skiff sets it for every instance",
                    e.name
                )));
            }
            crate::parse_env_list(&format!("{}=x", e.name))?;
            env.push((e.name.clone(), e.value.clone()));
        }
        let cpu_throttling = match t.metadata.annotations.get(ANN_CPU_THROTTLING) {
            None => true,
            // gcloud writes Python's `True`/`False`.
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(InvalidInput::new(format!(
                        "invalid annotation {ANN_CPU_THROTTLING}: {v:?}: use \"true\" or \"false\""
                    )))
                }
            },
        };
        if let Some(sa) = &spec.service_account_name {
            validate_service_account(sa)?;
        }
        Ok(RevisionSettings {
            service_account: spec.service_account_name.clone(),
            egress: egress_annotation(&t.metadata.annotations)?,
            cpu_throttling,
            image: c.image.clone(),
            port,
            concurrency,
            min_instances,
            max_instances,
            timeout: Duration::from_secs(timeout_secs),
            cpu_millis,
            memory_bytes,
            env,
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            autoscaling: t
                .metadata
                .annotations
                .iter()
                .filter(|(k, _)| k.starts_with(AUTOSCALING_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Container, ContainerPort, EnvVar, Resources};

    fn template(f: impl FnOnce(&mut RevisionTemplate)) -> RevisionTemplate {
        let mut t = RevisionTemplate::default();
        t.spec.containers.push(Container {
            image: "hello".into(),
            ..Default::default()
        });
        f(&mut t);
        t
    }

    #[test]
    fn defaults() {
        let s = RevisionSettings::from_template(&template(|_| {})).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.concurrency, 80);
        assert_eq!((s.min_instances, s.max_instances), (0, 100));
        assert_eq!(s.timeout, Duration::from_secs(300));
        assert_eq!((s.cpu_millis, s.memory_bytes), (1000, 512 << 20));
        assert!(s.cpu_throttling);
    }

    #[test]
    fn cpu_throttling_annotation() {
        let with = |v: &str| {
            RevisionSettings::from_template(&template(|t| {
                t.metadata
                    .annotations
                    .insert(ANN_CPU_THROTTLING.into(), v.into());
            }))
        };
        assert!(!with("false").unwrap().cpu_throttling);
        assert!(!with("False").unwrap().cpu_throttling);
        assert!(with("true").unwrap().cpu_throttling);
        let e = with("no").unwrap_err().to_string();
        assert!(e.contains(ANN_CPU_THROTTLING), "{e}");
    }

    #[test]
    fn overrides() {
        let s = RevisionSettings::from_template(&template(|t| {
            t.metadata
                .annotations
                .insert(ANN_MIN_SCALE.into(), "1".into());
            t.metadata
                .annotations
                .insert(ANN_MAX_SCALE.into(), "3".into());
            t.spec.container_concurrency = Some(5);
            t.spec.timeout_seconds = Some(10);
            let c = &mut t.spec.containers[0];
            c.ports.push(ContainerPort {
                name: None,
                container_port: 9000,
            });
            c.env.push(EnvVar {
                name: "A".into(),
                value: "b".into(),
            });
            c.resources = Some(Resources {
                limits: [
                    ("cpu".into(), "500m".into()),
                    ("memory".into(), "1Gi".into()),
                ]
                .into(),
            });
        }))
        .unwrap();
        assert_eq!(s.port, 9000);
        assert_eq!(s.concurrency, 5);
        assert_eq!((s.min_instances, s.max_instances), (1, 3));
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!((s.cpu_millis, s.memory_bytes), (500, 1 << 30));
        assert_eq!(s.env, vec![("A".to_string(), "b".to_string())]);
    }

    #[test]
    fn rejects() {
        type Edit = fn(&mut RevisionTemplate);
        let cases: &[(&str, Edit)] = &[
            ("no container", |t| t.spec.containers.clear()),
            ("no image", |t| t.spec.containers[0].image.clear()),
            ("concurrency", |t| t.spec.container_concurrency = Some(1001)),
            ("timeout", |t| t.spec.timeout_seconds = Some(3601)),
            ("min > max", |t| {
                t.metadata
                    .annotations
                    .insert(ANN_MIN_SCALE.into(), "5".into());
                t.metadata
                    .annotations
                    .insert(ANN_MAX_SCALE.into(), "2".into());
            }),
            ("bad scale", |t| {
                t.metadata
                    .annotations
                    .insert(ANN_MAX_SCALE.into(), "x".into());
            }),
            ("port", |t| {
                t.spec.containers[0].ports.push(ContainerPort {
                    name: None,
                    container_port: 70000,
                })
            }),
            ("reserved env", |t| {
                t.spec.containers[0].env.push(EnvVar {
                    name: "PORT".into(),
                    value: "1".into(),
                })
            }),
            ("memory", |t| {
                t.spec.containers[0].resources = Some(Resources {
                    limits: [("memory".into(), "1Mi".into())].into(),
                })
            }),
        ];
        for (what, edit) in cases {
            let mut t = template(|_| {});
            edit(&mut t);
            assert!(RevisionSettings::from_template(&t).is_err(), "{what}");
        }
    }
}
