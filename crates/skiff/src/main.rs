//! The one `skiff` binary: `skiff server` runs the platform, every other subcommand is a client
//! of its API, and the hidden `__shim` subcommand is the per-instance container helper.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__shim") {
        let dir = args.get(2).expect("usage: skiff __shim DIR");
        std::process::exit(skiff_runtime::shim::shim_main(std::path::Path::new(dir)));
    }
}
