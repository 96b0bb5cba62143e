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
            end_quietly_when_stdout_closes();
            skiff_cli::run(&cli.global, *c)
        }
    };
    if let Err(e) = result {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

/// Makes a client command whose stdout reader goes away (`skiff services list | head`) end the
/// way other command-line tools do, killed by SIGPIPE and silent, instead of printing the panic
/// of the failed `println!`.
///
/// SIGPIPE itself stays ignored, as Rust programs start: a socket whose peer has closed (a
/// server that refuses an upload before reading it) must fail the write with EPIPE so that the
/// CLI goes on to read the server's answer. Vectored socket writes (`writev`) cannot ask for
/// `MSG_NOSIGNAL`, so the default disposition would kill the CLI mid-upload.
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    let broken_pipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.ends_with(&broken_pipe) {
            // SAFETY: restoring a signal's default disposition and raising it have no
            // preconditions; the process ends here as `head`'s writer is expected to.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default(info)
    }));
}
