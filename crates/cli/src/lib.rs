//! `skiff-cli`: the client half of the `skiff` binary. Every subcommand but `skiff server` lives
//! here; each one is a thin client of the control API (Cloud Run Admin API v1 for services,
//! revisions and IAM, `/skiff/v1/...` for images, instances, logs, usage and identity tokens).
//!
//! `skiff gcloud configure` sets up the Google Cloud CLI to drive the same API.
//!
//! The binary flattens [`GlobalArgs`] and [`ClientCommand`] into its own parser and calls
//! [`run`]; an `Err` is printed as one line `error: ...`, so every message here is one line
//! that says what was wrong and what to do.

mod api;
mod auth;
mod billing;
mod builds;
mod containers;
mod deploy;
mod domains;
mod gcloud;
mod images;
mod instances;
mod jobs;
mod logs;
mod output;
mod pubsub;
mod registries;
mod revisions;
mod scheduler;
mod secretrefs;
mod secrets;
mod services;
mod traffic;
mod triggers;

use std::path::PathBuf;

pub use auth::AuthCommand;
pub use deploy::DeployArgs;
pub use gcloud::write_private;
pub use images::ImagesCommand;
pub use instances::InstancesCommand;
pub use logs::LogsCommand;
pub use revisions::RevisionsCommand;
pub use services::ServicesCommand;

/// Options every client command shares: where the API is, how to authenticate, which project.
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// URL of the Skiff control API
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        env = "SKIFF_API_URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub api_url: String,

    /// Admin token for the control API (default: read DATA_DIR/admin.token)
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        env = "SKIFF_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Project (namespace) the command works in
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        env = "SKIFF_PROJECT",
        default_value = "default",
        value_name = "PROJECT"
    )]
    pub project: String,

    /// Skiff's state directory [default: /var/lib/skiff as root, else $XDG_DATA_HOME/skiff]
    #[arg(
        long,
        global = true,
        help_heading = "Global Options",
        env = "SKIFF_DATA_DIR",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,
}

impl GlobalArgs {
    /// The data directory given, else [`default_data_dir`].
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }
}

/// The client subcommands of `skiff`.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Create or update a service, making a new revision
    Deploy(Box<DeployArgs>),
    /// List, describe, delete, replace services and move their traffic
    Services {
        #[command(subcommand)]
        command: ServicesCommand,
    },
    /// List, describe and delete revisions
    Revisions {
        #[command(subcommand)]
        command: RevisionsCommand,
    },
    /// List the live instances of services
    Instances {
        #[command(subcommand)]
        command: InstancesCommand,
    },
    /// Import, pull, list and delete container images
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Credentials and settings for the registries images are pulled from
    Registries {
        #[command(subcommand)]
        command: registries::RegistriesCommand,
    },
    /// Read the logs of services' containers
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
    /// Get tokens that private services accept
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Run-to-completion jobs: create, execute, and follow their executions
    Jobs {
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Run jobs or call URLs on a cron schedule
    Scheduler {
        #[command(subcommand)]
        command: scheduler::SchedulerCommand,
    },
    /// Build images from source: submit, list, describe, log, cancel
    Builds {
        #[command(subcommand)]
        command: builds::BuildsCommand,
    },
    /// Secrets: values kept encrypted by the server, in Secret Manager's shape
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Usage and cost reports
    Billing {
        #[command(subcommand)]
        command: billing::BillingCommand,
    },
    /// Set up the Google Cloud CLI (gcloud run ...) to drive this server
    Gcloud {
        #[command(subcommand)]
        command: gcloud::GcloudCommand,
    },
    /// Pub/Sub topics and subscriptions (gcloud pubsub's shape)
    Pubsub {
        #[command(subcommand)]
        command: pubsub::PubsubCommand,
    },
    /// Eventarc-style triggers: deliver events to services as CloudEvents
    Triggers {
        #[command(subcommand)]
        command: triggers::TriggersCommand,
    },
    /// Custom domains routed to services (gcloud beta run domain-mappings' shape)
    DomainMappings {
        #[command(subcommand)]
        command: domains::DomainMappingsCommand,
    },
}

/// Runs one client command against the API `global` names.
pub fn run(global: &GlobalArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    precheck(&cmd)?;
    let api = api::Api::new(global)?;
    match cmd {
        ClientCommand::Deploy(args) => deploy::run(&api, *args),
        ClientCommand::Services { command } => services::run(&api, command),
        ClientCommand::Revisions { command } => revisions::run(&api, command),
        ClientCommand::Instances { command } => instances::run(&api, command),
        ClientCommand::Images { command } => images::run(&api, command),
        ClientCommand::Registries { command } => registries::run(&api, command),
        ClientCommand::Logs { command } => logs::run(&api, command),
        ClientCommand::Auth { command } => auth::run(&api, command),
        ClientCommand::Jobs { command } => jobs::run(&api, command),
        ClientCommand::Scheduler { command } => scheduler::run(&api, command),
        ClientCommand::Billing { command } => billing::run(&api, command),
        ClientCommand::Builds { command } => builds::run(&api, command),
        ClientCommand::Secrets { command } => secrets::run(&api, command),
        ClientCommand::Gcloud { command } => gcloud::run(&api, global, command),
        ClientCommand::Pubsub { command } => pubsub::run(&api, command),
        ClientCommand::Triggers { command } => triggers::run(&api, command),
        ClientCommand::DomainMappings { command } => domains::run(&api, command),
    }
}

/// Checks what can be checked without the server, so that a typo fails before the token is
/// read or anything is sent.
fn precheck(cmd: &ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Deploy(args) => deploy::precheck(args).map(|_| ()),
        ClientCommand::Images {
            command: ImagesCommand::Import { path, .. },
        } => images::check_path(path).map(|_| ()),
        ClientCommand::Services {
            command: ServicesCommand::UpdateTraffic(args),
        } => args.edit().map(|_| ()),
        ClientCommand::Triggers { command } => triggers::precheck(command),
        ClientCommand::DomainMappings { command } => domains::precheck(command),
        _ => Ok(()),
    }
}

/// `/var/lib/skiff` when running as root (effective uid 0), else `$XDG_DATA_HOME/skiff`,
/// falling back to `~/.local/share/skiff`.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    data_dir_for(
        euid,
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn data_dir_for(euid: u32, xdg: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    if euid == 0 {
        return PathBuf::from("/var/lib/skiff");
    }
    // The XDG spec says relative values are to be ignored.
    if let Some(x) = xdg.filter(|x| x.is_absolute()) {
        return x.join("skiff");
    }
    match home.filter(|h| !h.as_os_str().is_empty()) {
        Some(h) => h.join(".local/share/skiff"),
        None => PathBuf::from("/var/lib/skiff"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn data_dirs() {
        let p = |s: &str| Some(PathBuf::from(s));
        let cases: &[(u32, Option<PathBuf>, Option<PathBuf>, &str)] = &[
            (0, p("/x"), p("/home/a"), "/var/lib/skiff"),
            (1000, p("/x"), p("/home/a"), "/x/skiff"),
            (1000, p("rel"), p("/home/a"), "/home/a/.local/share/skiff"),
            (1000, None, p("/home/a"), "/home/a/.local/share/skiff"),
            (1000, None, None, "/var/lib/skiff"),
        ];
        for (euid, xdg, home, want) in cases {
            assert_eq!(
                data_dir_for(*euid, xdg.clone(), home.clone()),
                PathBuf::from(want),
                "{euid} {xdg:?} {home:?}"
            );
        }
    }

    /// Mirrors how the binary embeds the client: global args flattened, commands flattened.
    #[derive(Parser, Debug)]
    #[command(name = "skiff")]
    struct Cli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_command_lines() {
        let ok: &[&str] = &[
            "skiff deploy hello --image busybox --port 9000 --args=-c,echo --tag blue",
            "skiff deploy hello --image busybox --no-allow-unauthenticated",
            "skiff services list --format json",
            "skiff services describe hello --format export",
            "skiff services update-traffic hello --to-latest",
            "skiff services update-traffic hello --to-revisions a=50,b=50 --remove-tags x",
            "skiff services update-traffic hello --update-tags blue=hello-00001-abc",
            "skiff revisions list --service hello --project p",
            "skiff instances list --service hello --format json",
            "skiff images import ./img.tar --name hello:v1",
            "skiff logs read --service hello --limit 10 --follow",
            "skiff logs read --job j --execution j-abc",
            "skiff auth print-identity-token --audience http://hello.localhost",
            "skiff gcloud configure",
            "skiff deploy hello --source . --set-build-env-vars A=1 --base-image python:3.12",
            "skiff builds submit dir --tag app:v1 --build-timeout 5m",
            "skiff builds list --service hello --format json",
            "skiff builds list --job nightly",
            "skiff jobs deploy nightly --source . --tasks 2 --base-image python:3.12",
            "skiff jobs deploy nightly --image busybox --args=-c,true",
            "skiff builds describe abc --format yaml",
            "skiff builds log abc",
            "skiff builds cancel abc",
            "skiff gcloud configure --configuration dev --activate --project demo",
        ];
        for line in ok {
            let args = line.split(' ');
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{line}: {e}");
            }
        }
        let bad: &[&str] = &[
            "skiff deploy hello --allow-unauthenticated --no-allow-unauthenticated",
            "skiff services update-traffic hello",
            "skiff services update-traffic hello --to-latest --to-revisions a=100",
            "skiff logs read",
            "skiff logs read --service a --job b",
            "skiff services describe hello --format xml",
            "skiff deploy hello --set-env-vars A=1 --update-env-vars B=2",
            "skiff deploy hello --image x --source .",
            "skiff builds submit dir",
            "skiff jobs deploy nightly --image x --source .",
            "skiff builds list --service a --job b",
        ];
        for line in bad {
            assert!(Cli::try_parse_from(line.split(' ')).is_err(), "{line}");
        }
    }

    #[test]
    fn global_args_after_subcommand() {
        let cli = Cli::try_parse_from([
            "skiff",
            "services",
            "list",
            "--project",
            "team",
            "--api-url",
            "http://h:1",
            "--token",
            "t",
            "--data-dir",
            "/d",
        ])
        .unwrap();
        assert_eq!(cli.global.project, "team");
        assert_eq!(cli.global.api_url, "http://h:1");
        assert_eq!(cli.global.token.as_deref(), Some("t"));
        assert_eq!(cli.global.data_dir(), PathBuf::from("/d"));
    }
}
