//! The one `skiff` binary: `skiff server` runs the platform, every other subcommand is a client
//! of its API, and the hidden `__shim` subcommand is the per-instance container helper.

mod acme;
mod config;
mod server;

use clap::{CommandFactory, Parser, Subcommand};
use skiff_cli::{ClientCommand, GlobalArgs};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A self-hosted Cloud Run: deploy container images as services that scale to zero"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: control API, ingress, instances.
    Server(Box<server::ServerArgs>),
    #[command(flatten)]
    Client(Box<ClientCommand>),
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__shim") {
        let Some(dir) = args.get(2) else {
            eprintln!("error: usage: skiff __shim DIR");
            std::process::exit(2);
        };
        std::process::exit(skiff_runtime::shim::shim_main(std::path::Path::new(dir)));
    }
    let args = match config::expand(args, &Cli::command()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Server(a) => server::run(&cli.global, *a),
        Command::Client(c) => {
            // Like other command-line tools, end quietly when the reader of stdout goes away
            // (`skiff services list | head`) instead of panicking on the failed print. Sockets
            // are not affected: their writes use MSG_NOSIGNAL.
            // SAFETY: setting a signal's disposition to the default has no preconditions.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            skiff_cli::run(&cli.global, *c)
        }
    };
    if let Err(e) = result {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
