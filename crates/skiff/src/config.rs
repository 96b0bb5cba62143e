//! `skiff server --config FILE`: a YAML mapping whose keys are `skiff server`'s flags without
//! their dashes (`api: 0.0.0.0:8081`, `header-read-timeout: 30s`, `network-deny: [a, b]`,
//! `no-instance-network: true`). The file's settings become flags placed before the command
//! line's, and a flag given on the command line wins over the file's key.
//!
//! clap has no configuration-file source of its own, so the file is turned into arguments
//! before parsing; the flags' own parsers then check every value, whichever way it came.

use anyhow::{anyhow, bail, Context};
use clap::{Arg, ArgAction, Command};
use std::path::Path;

/// The command line with `--config FILE`'s settings added, when the command is `server` and
/// the flag is given; otherwise `args` as they are. `cmd` is the whole CLI's clap command.
///
/// Errors: the file cannot be read or is not a YAML mapping, a key is not a flag of
/// `skiff server` (named in the message), a value is not a scalar, a list or a boolean.
pub fn expand(args: Vec<String>, cmd: &Command) -> anyhow::Result<Vec<String>> {
    let Some(at) = subcommand_at(&args, cmd, "server") else {
        return Ok(args);
    };
    let Some(file) = flag_value(&args[at + 1..], "config") else {
        return Ok(args);
    };
    let server = cmd
        .find_subcommand("server")
        .expect("the CLI has a server subcommand");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("cannot read --config {file}"))?;
    let settings = settings_args(&text, Path::new(&file), cmd, server, &args)?;
    let mut out = args;
    out.splice(at + 1..at + 1, settings);
    Ok(out)
}

/// Where subcommand `name` stands in `args`, skipping the values of the global flags before
/// it; `None` when the command is another.
fn subcommand_at(args: &[String], cmd: &Command, name: &str) -> Option<usize> {
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if let Some(long) = a.strip_prefix("--") {
            let takes_value = !long.contains('=')
                && find_arg(cmd, long).is_some_and(|arg| arg.get_action().takes_values());
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        return (a == name).then_some(i);
    }
    None
}

/// The value of `--name VALUE` or `--name=VALUE` in `args`.
fn flag_value(args: &[String], name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == &flag {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_string());
        }
    }
    None
}

/// The argument `long` (its name or an alias) among `cmd`'s own.
fn find_arg<'a>(cmd: &'a Command, long: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(long) || a.get_all_aliases().is_some_and(|al| al.contains(&long))
    })
}

/// Whether the command line sets `arg` (by its name or an alias).
fn on_command_line(args: &[String], arg: &Arg) -> bool {
    let mut names: Vec<&str> = arg.get_long().into_iter().collect();
    names.extend(arg.get_all_aliases().unwrap_or_default());
    args.iter().any(|a| {
        names.iter().any(|n| {
            a.strip_prefix("--")
                .and_then(|r| r.strip_prefix(n))
                .is_some_and(|r| r.is_empty() || r.starts_with('='))
        })
    })
}

/// The file's settings as flags, leaving out those the command line sets.
fn settings_args(
    text: &str,
    file: &Path,
    cli: &Command,
    server: &Command,
    args: &[String],
) -> anyhow::Result<Vec<String>> {
    let where_ = || format!("--config {}", file.display());
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| anyhow!("invalid {}: {e}", where_()))?;
    let map = match doc {
        serde_yaml::Value::Mapping(m) => m,
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => bail!(
            "invalid {}: give a mapping of `skiff server` flags without their dashes to values, like `api: 127.0.0.1:8081`",
            where_()
        ),
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = match &k {
            serde_yaml::Value::String(s) => s.clone(),
            other => bail!("invalid {}: key {other:?} is not a flag name", where_()),
        };
        let arg = find_arg(server, &key)
            .or_else(|| find_arg(cli, &key).filter(|a| a.is_global_set()))
            .filter(|a| key != "config" && a.get_long().is_some())
            .ok_or_else(|| {
                anyhow!(
                    "unknown key {key:?} in {}: keys are the flags of `skiff server --help` without their dashes, like api or header-read-timeout",
                    where_()
                )
            })?;
        if on_command_line(args, arg) {
            continue;
        }
        let long = arg.get_long().expect("filtered on a long name");
        let bad = |what: &str| anyhow!("invalid {}: {key}: {what}", where_());
        match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match v {
                serde_yaml::Value::Bool(true) => out.push(format!("--{long}")),
                serde_yaml::Value::Bool(false) => {}
                _ => return Err(bad("give true or false")),
            },
            _ => {
                let values = match v {
                    serde_yaml::Value::Sequence(items) => items
                        .into_iter()
                        .map(scalar)
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| bad("give a list of plain values"))?,
                    other => vec![scalar(other).ok_or_else(|| bad("give a plain value"))?],
                };
                for value in values {
                    out.push(format!("--{long}={value}"));
                }
            }
        }
    }
    Ok(out)
}

/// A YAML scalar as the text a flag takes.
fn scalar(v: serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn expand_with(yaml: &str, cli: &[&str]) -> anyhow::Result<Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        let args: Vec<String> = cli
            .iter()
            .map(|a| a.replace("FILE", path.to_str().unwrap()))
            .collect();
        expand(args, &crate::Cli::command()).map(|v| {
            v.into_iter()
                .map(|a| a.replace(path.to_str().unwrap(), "FILE"))
                .collect()
        })
    }

    fn check(yaml: &str, cli: &[&str], expect: &[&str]) {
        assert_eq!(expand_with(yaml, cli).unwrap(), expect, "{yaml}");
    }

    #[test]
    fn settings_become_flags_before_the_command_lines() {
        check(
            "api: 0.0.0.0:9081\nheader-read-timeout: 30s\nnetwork-deny: [10.1.0.0/16, 10.2.0.0/16]\nno-instance-network: true\nnetwork-prepared: 2\ndata-dir: /srv/skiff\n",
            &["skiff", "server", "--config", "FILE"],
            &[
                "skiff",
                "server",
                "--api=0.0.0.0:9081",
                "--header-read-timeout=30s",
                "--network-deny=10.1.0.0/16",
                "--network-deny=10.2.0.0/16",
                "--no-instance-network",
                "--network-prepared=2",
                "--data-dir=/srv/skiff",
                "--config",
                "FILE",
            ],
        );
        check(
            "https: 0.0.0.0:443\nacme-directory: https://acme.example.com/dir\nacme-email: ops@example.com\nacme-ca: /etc/skiff/ca.pem\n",
            &["skiff", "server", "--config", "FILE"],
            &[
                "skiff",
                "server",
                "--https=0.0.0.0:443",
                "--acme-directory=https://acme.example.com/dir",
                "--acme-email=ops@example.com",
                "--acme-ca=/etc/skiff/ca.pem",
                "--config",
                "FILE",
            ],
        );
        // false leaves a switch off; an empty file adds nothing.
        check(
            "no-instance-network: false",
            &["skiff", "server", "--config=FILE"],
            &["skiff", "server", "--config=FILE"],
        );
        check(
            "",
            &["skiff", "server", "--config=FILE"],
            &["skiff", "server", "--config=FILE"],
        );
    }

    #[test]
    fn the_command_line_wins_and_aliases_count() {
        check(
            "api: 0.0.0.0:9081\nhttp: 0.0.0.0:80\ndata-dir: /srv/skiff\n",
            &[
                "skiff",
                "--data-dir",
                "/tmp/d",
                "server",
                "--config",
                "FILE",
                "--api=127.0.0.1:1",
                "--ingress",
                "127.0.0.1:2",
            ],
            &[
                "skiff",
                "--data-dir",
                "/tmp/d",
                "server",
                "--config",
                "FILE",
                "--api=127.0.0.1:1",
                "--ingress",
                "127.0.0.1:2",
            ],
        );
        // A key may be an alias.
        check(
            "ingress: 0.0.0.0:80",
            &["skiff", "server", "--config", "FILE"],
            &["skiff", "server", "--http=0.0.0.0:80", "--config", "FILE"],
        );
    }

    #[test]
    fn other_commands_and_no_config_are_left_alone() {
        check(
            "api: x",
            &["skiff", "services", "list"],
            &["skiff", "services", "list"],
        );
        check("api: x", &["skiff", "server"], &["skiff", "server"]);
    }

    #[test]
    fn bad_files_are_refused_naming_what_is_wrong() {
        let e = |yaml: &str| {
            format!(
                "{:#}",
                expand_with(yaml, &["skiff", "server", "--config", "FILE"]).unwrap_err()
            )
        };
        let msg = e("apii: 1.2.3.4:5");
        assert!(msg.contains("unknown key \"apii\""), "{msg}");
        assert!(e("config: other.yaml").contains("unknown key \"config\""));
        assert!(e("- api").contains("give a mapping"));
        assert!(e("no-instance-network: yes please").contains("true or false"));
        assert!(e("api: {a: 1}").contains("plain value"));
        let missing = expand(
            vec![
                "skiff".into(),
                "server".into(),
                "--config".into(),
                "/nonexistent/c.yaml".into(),
            ],
            &crate::Cli::command(),
        )
        .unwrap_err();
        assert!(format!("{missing:#}").contains("cannot read --config /nonexistent/c.yaml"));
    }
}
