//! `skiff deploy ... --container NAME [FLAGS] --container NAME2 [FLAGS]`: gcloud's
//! per-container flag groups. Everything from the first `--container` on reaches
//! [`crate::DeployArgs::container`] as raw words (clap keeps no order between flags); this
//! module splits them at each `--container`, parses each group with [`ContainerFlags`], and
//! applies each group to the container of that name, adding it when the service has none.

use crate::deploy::{Changes, DeployArgs};
use anyhow::{anyhow, bail, Result};
use clap::{CommandFactory, Parser};
use skiff_model::{Container, RevisionTemplate};

/// The flags of one container (gcloud 528's "Container Flags" that Skiff has). Before the
/// first `--container` they are the ingress container's; after it, each group's own.
#[derive(Parser, Debug, Clone, Default)]
#[command(no_binary_name = true, disable_help_flag = true)]
pub struct ContainerFlags {
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub port: Option<u32>,
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, conflicts_with_all = ["update_env_vars", "remove_env_vars", "clear_env_vars"])]
    pub set_env_vars: Option<String>,
    #[arg(long, conflicts_with = "clear_env_vars")]
    pub update_env_vars: Option<String>,
    #[arg(long, conflicts_with = "clear_env_vars")]
    pub remove_env_vars: Option<String>,
    #[arg(long)]
    pub clear_env_vars: bool,
    #[arg(long, conflicts_with_all = ["update_secrets", "remove_secrets", "clear_secrets"])]
    pub set_secrets: Option<String>,
    #[arg(long, conflicts_with = "clear_secrets")]
    pub update_secrets: Option<String>,
    #[arg(long, conflicts_with = "clear_secrets")]
    pub remove_secrets: Option<String>,
    #[arg(long)]
    pub clear_secrets: bool,
    #[arg(long, allow_hyphen_values = true)]
    pub command: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    #[arg(long, overrides_with = "no_use_http2")]
    pub use_http2: bool,
    #[arg(long, overrides_with = "use_http2")]
    pub no_use_http2: bool,
    /// The containers this one starts after (`run.googleapis.com/container-dependencies`).
    #[arg(long)]
    pub depends_on: Option<String>,
}

/// One `--container NAME` group, checked: the container's name, its changes, and the
/// containers it starts after (added to those it had).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerChanges {
    pub name: String,
    pub changes: Changes,
    pub depends_on: Vec<String>,
}

/// The container flags given before any `--container` (`--image` and the like), by name.
pub fn top_level_container_flags(a: &DeployArgs) -> Vec<&'static str> {
    [
        (a.image.is_some(), "--image"),
        (a.port.is_some(), "--port"),
        (a.cpu.is_some(), "--cpu"),
        (a.memory.is_some(), "--memory"),
        (a.set_env_vars.is_some(), "--set-env-vars"),
        (a.update_env_vars.is_some(), "--update-env-vars"),
        (a.remove_env_vars.is_some(), "--remove-env-vars"),
        (a.clear_env_vars, "--clear-env-vars"),
        (a.set_secrets.is_some(), "--set-secrets"),
        (a.update_secrets.is_some(), "--update-secrets"),
        (a.remove_secrets.is_some(), "--remove-secrets"),
        (a.clear_secrets, "--clear-secrets"),
        (a.command.is_some(), "--command"),
        (a.args.is_some(), "--args"),
        (a.use_http2, "--use-http2"),
        (a.no_use_http2, "--no-use-http2"),
        (a.source.is_some(), "--source"),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .map(|(_, f)| f)
    .collect()
}

/// Splits the words from the first `--container` on (its value first: `NAME FLAGS...
/// --container NAME2 FLAGS...`) into checked groups. Errors: a flag that is not a container
/// flag (service flags go before the first `--container`), a container named twice, more
/// than one group with `--port`, and any flag's own error, each naming the container.
pub fn parse_groups(words: &[String]) -> Result<Vec<ContainerChanges>> {
    // `words[0]` is the first group's name (the first `--container`'s value).
    let mut groups: Vec<Vec<String>> = vec![Vec::new()];
    for w in words {
        if w == "--container" {
            groups.push(Vec::new());
        } else if let Some(n) = w.strip_prefix("--container=") {
            groups.push(vec![n.to_string()]);
        } else {
            groups
                .last_mut()
                .expect("one group at least")
                .push(w.clone());
        }
    }
    let known: Vec<String> = ContainerFlags::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut out: Vec<ContainerChanges> = Vec::new();
    for g in groups {
        let Some((name, flags)) = g.split_first() else {
            bail!("--container needs a container name: give --container NAME");
        };
        skiff_model::validate_name("container", name, 63)
            .map_err(|e| anyhow!("--container {name}: {e}"))?;
        if out.iter().any(|c| c.name == *name) {
            bail!("--container {name} is given twice: give each container's flags in one group");
        }
        // A word in flag position that is no container flag is a service flag given late.
        // (`--command`'s and `--args`' values may start with `--`.)
        for (i, w) in flags.iter().enumerate() {
            let flag = w.split_once('=').map_or(w.as_str(), |(f, _)| f);
            let a_value = i > 0 && matches!(flags[i - 1].as_str(), "--command" | "--args");
            if flag.starts_with("--") && !a_value && !known.iter().any(|k| k == flag) {
                bail!(
                    "{flag} after --container {name}: it is not a container flag: give it before the first --container"
                );
            }
        }
        let f = ContainerFlags::try_parse_from(flags).map_err(|e| {
            let msg = e.to_string();
            let line = msg
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            anyhow!("--container {name}: {line}")
        })?;
        let changes = as_deploy_args(&f)
            .changes()
            .map_err(|e| anyhow!("--container {name}: {e}"))?;
        let depends_on: Vec<String> = f
            .depends_on
            .as_deref()
            .map(crate::deploy::split_list)
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect();
        out.push(ContainerChanges {
            name: name.clone(),
            changes,
            depends_on,
        });
    }
    let with_port: Vec<&str> = out
        .iter()
        .filter(|c| c.changes.port.is_some())
        .map(|c| c.name.as_str())
        .collect();
    if with_port.len() > 1 {
        bail!(
            "--port is given for containers {}: only the ingress container has a port, sidecars have none",
            with_port.join(" and ")
        );
    }
    Ok(out)
}

/// A group's flags as the deploy flags they mirror, to reuse their checks.
fn as_deploy_args(f: &ContainerFlags) -> DeployArgs {
    DeployArgs {
        image: f.image.clone(),
        port: f.port,
        cpu: f.cpu.clone(),
        memory: f.memory.clone(),
        set_env_vars: f.set_env_vars.clone(),
        update_env_vars: f.update_env_vars.clone(),
        remove_env_vars: f.remove_env_vars.clone(),
        clear_env_vars: f.clear_env_vars,
        set_secrets: f.set_secrets.clone(),
        update_secrets: f.update_secrets.clone(),
        remove_secrets: f.remove_secrets.clone(),
        clear_secrets: f.clear_secrets,
        command: f.command.clone(),
        args: f.args.clone(),
        use_http2: f.use_http2,
        no_use_http2: f.no_use_http2,
        ..Default::default()
    }
}

/// Applies the groups to the template: each to the container of its name (a new one, which
/// needs `--image`, is added at the end), keeping the containers not named; then adds each
/// group's `--depends-on` to `run.googleapis.com/container-dependencies`. Errors: a new
/// container without an image, an unnamed ingress container beside named ones, and more
/// than one container with ports.
pub fn apply_groups(t: &mut RevisionTemplate, groups: &[ContainerChanges]) -> Result<()> {
    for g in groups {
        let i = match t
            .spec
            .containers
            .iter()
            .position(|c| c.name.as_deref() == Some(g.name.as_str()))
        {
            Some(i) => i,
            // The one unnamed container (a service deployed without --container) takes the
            // name of the group that gives it its port.
            None => match t.spec.containers.as_slice() {
                [c] if c.name.is_none() && g.changes.port.is_some() => 0,
                _ => {
                    if g.changes.image.is_none() {
                        bail!(
                            "--container {}: the service has no container {} yet: give its image with --image",
                            g.name,
                            g.name
                        );
                    }
                    t.spec.containers.push(Container::default());
                    t.spec.containers.len() - 1
                }
            },
        };
        t.spec.containers[i].name = Some(g.name.clone());
        crate::deploy::apply_container(&mut t.spec, i, &g.changes)?;
    }
    let key = skiff_model::ANN_CONTAINER_DEPENDENCIES;
    if groups.iter().any(|g| !g.depends_on.is_empty()) {
        let mut deps: std::collections::BTreeMap<String, Vec<String>> =
            match t.metadata.annotations.get(key) {
                Some(v) => serde_json::from_str(v)
                    .map_err(|e| anyhow!("the service's annotation {key} is not valid: {e}"))?,
                None => Default::default(),
            };
        for g in groups {
            let list = deps.entry(g.name.clone()).or_default();
            for d in &g.depends_on {
                if !list.contains(d) {
                    list.push(d.clone());
                }
            }
        }
        deps.retain(|_, v| !v.is_empty());
        t.metadata.annotations.insert(
            key.to_string(),
            serde_json::to_string(&deps).expect("a map of lists serializes"),
        );
    }
    let cs = &t.spec.containers;
    if cs.len() > 1 {
        if let Some(i) = cs.iter().position(|c| c.name.is_none()) {
            bail!(
                "the service's container {i} has no name, and a service with sidecars names each one: name it with --container NAME --port PORT"
            );
        }
    }
    let with_ports: Vec<&str> = cs
        .iter()
        .filter(|c| !c.ports.is_empty())
        .filter_map(|c| c.name.as_deref())
        .collect();
    if with_ports.len() > 1 {
        bail!(
            "containers {} would both have ports: only the ingress container has one; the other is the service's ingress container already",
            with_ports.join(" and ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split(' ').map(String::from).collect()
    }

    /// Parses `line` (the words after the first `--container`) and applies it to `t`.
    fn apply(t: &mut RevisionTemplate, line: &str) -> Result<()> {
        apply_groups(t, &parse_groups(&words(line))?)
    }

    fn names(t: &RevisionTemplate) -> Vec<String> {
        t.spec
            .containers
            .iter()
            .map(|c| format!("{}:{}", c.name.clone().unwrap_or_default(), c.image))
            .collect()
    }

    #[test]
    fn groups_make_and_update_containers() {
        let mut t = RevisionTemplate::default();
        apply(
            &mut t,
            "app --image web --port 8080 --set-env-vars A=1 --depends-on side --container side --image proxy --cpu 500m --args=-v,--quiet",
        )
        .unwrap();
        assert_eq!(names(&t), ["app:web", "side:proxy"]);
        let (app, side) = (&t.spec.containers[0], &t.spec.containers[1]);
        assert_eq!(app.ports[0].container_port, 8080);
        assert_eq!(app.env[0].name, "A");
        assert!(side.ports.is_empty());
        assert_eq!(side.args, ["-v", "--quiet"]);
        assert_eq!(
            side.resources.as_ref().unwrap().limits["cpu"],
            "500m".to_string()
        );
        assert_eq!(
            t.metadata.annotations[skiff_model::ANN_CONTAINER_DEPENDENCIES],
            r#"{"app":["side"]}"#
        );
        // An update names one container; the other keeps everything.
        apply(&mut t, "side --image proxy:2 --set-env-vars B=2").unwrap();
        assert_eq!(names(&t), ["app:web", "side:proxy:2"]);
        assert_eq!(t.spec.containers[0].env[0].name, "A");
        assert_eq!(t.spec.containers[1].env[0].name, "B");
        // A service deployed without --container: its container takes the name of the group
        // that gives the port.
        let mut one = RevisionTemplate::default();
        one.spec.containers.push(Container {
            image: "web".into(),
            ..Default::default()
        });
        apply(&mut one, "app --port 8080 --container side --image proxy").unwrap();
        assert_eq!(names(&one), ["app:web", "side:proxy"]);
    }

    #[test]
    fn bad_groups_are_refused_naming_what_is_wrong() {
        let cases = [
            (
                "app --image web --port 8080 --container side --image p --port 9000",
                "--port is given for containers app and side: only the ingress container has a port",
            ),
            (
                "app --image web --port 8080 --tag blue",
                "--tag after --container app: it is not a container flag: give it before the first --container",
            ),
            (
                "app --image web --container app --cpu 1",
                "--container app is given twice",
            ),
            ("side --cpu 1", "--container side: the service has no container side yet: give its image with --image"),
            ("app --image web --memory lots", "--container app: "),
            ("Bad_Name --image web", "--container Bad_Name: "),
            ("app --image web --port", "--container app: "),
        ];
        for (line, want) in cases {
            let mut t = RevisionTemplate::default();
            let e = apply(&mut t, line).unwrap_err().to_string();
            assert!(e.starts_with(want), "{line}: {e}");
            assert!(!e.contains('\n'), "{line}: {e}");
        }
        // A sidecar given a port beside an ingress container that has one.
        let mut t = RevisionTemplate::default();
        apply(&mut t, "app --image web --port 8080").unwrap();
        let e = apply(&mut t, "side --image p --port 9000").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("containers app and side would both have ports"),
            "{e}"
        );
        // Two containers, one of them unnamed.
        let mut t = RevisionTemplate::default();
        t.spec.containers.push(Container {
            image: "web".into(),
            ..Default::default()
        });
        let e = apply(&mut t, "side --image p").unwrap_err();
        assert!(
            e.to_string()
                .contains("has no name, and a service with sidecars names each one: name it with --container NAME --port PORT"),
            "{e}"
        );
    }
}
