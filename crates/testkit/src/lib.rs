//! Test support for Skiff's integration tests and benchmarks: builds real OCI images from
//! Debian's `busybox-static` and from Debian root file systems made by `mmdebstrap` (with
//! PyPI packages), converts them with the real `skopeo`, serves them from Debian's
//! `docker-registry`, runs the real `skiff` binary as a server in a private data dir (cleaning
//! up after itself even when a test fails),
//! drives steady parallel load at its ingress, makes a test certificate authority and speaks
//! TLS to the HTTPS ingress, runs Debian's `pebble` ACME CA with `pebble-challtestsrv` as its
//! DNS, and reads block YAML without Skiff's own parser.

pub mod debian;
pub mod image;
pub mod load;
pub mod pebble;
pub mod registry;
pub mod runc;
pub mod server;
pub mod tls;
pub mod yaml;

pub use debian::debian_image;
pub use image::{app_path, busybox_image, ImageSpec};
pub use load::{burst, Load, Report};
pub use pebble::Pebble;
pub use registry::{CuttingProxy, TestRegistry};
pub use server::{http_get, listening, start_step_medians, TestServer};
pub use tls::{TestCa, TlsClient};

/// `len` pseudo-random bytes (xorshift64 from a fixed seed) that gzip cannot shrink: for
/// sources and uploads that must stay as large as they are.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs a command and returns its stdout, panicking with its stderr on failure.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? .ci/run installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bench's command line, `[NUMBERS...] [SERVER FLAGS...]`: the numbers before the first
/// `--flag`, and that flag and everything after it, to pass to `skiff server` (to compare
/// settings in one build). The `--bench` that `cargo bench` adds is left out; an argument
/// among the numbers that is not one is skipped.
pub fn bench_args() -> (Vec<u64>, Vec<String>) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let flags_at = args
        .iter()
        .position(|a| a.starts_with("--") && a.len() > 2)
        .unwrap_or(args.len());
    let nums = args[..flags_at]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    (nums, args[flags_at..].to_vec())
}
