//! Task throughput: one execution of N tasks of `true` at parallelism P, beside the same
//! containers started with `runc run` through `xargs -P P` in the same run. Prints tasks per
//! second of each and their ratio.
//!
//! `sudo cargo bench -p skiff --bench task_throughput [-- TASKS [PARALLELISM]]` (needs runc).

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn skiff_rate(layout: &Path, tasks: u64, parallelism: u64) -> f64 {
    let s = TestServer::start(Path::new(env!("CARGO_BIN_EXE_skiff")), &[]);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    s.ok(&[
        "jobs",
        "create",
        "bench",
        "--image",
        "bench",
        "--command",
        "/bin/true",
        "--tasks",
        &tasks.to_string(),
        "--parallelism",
        &parallelism.to_string(),
        "--max-retries",
        "0",
    ]);
    let t = Instant::now();
    s.ok(&["jobs", "execute", "bench", "--wait"]);
    tasks as f64 / t.elapsed().as_secs_f64()
}

fn runc_rate(layout: &Path, tasks: u64, parallelism: u64) -> f64 {
    let bundle = tempfile::tempdir().unwrap();
    // One read-only rootfs shared by every container, as Skiff shares image layers.
    skiff_testkit::runc::bundle(
        layout,
        bundle.path(),
        &["/bin/true".to_string()],
        true,
        false,
    );
    let prefix = format!("skiff-tp-{}", std::process::id());
    let t = Instant::now();
    let mut xargs = Command::new("xargs")
        .args([
            "-P",
            &parallelism.to_string(),
            "-I{}",
            "runc",
            "run",
            "--bundle",
        ])
        .arg(bundle.path())
        .arg(format!("{prefix}-{{}}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("xargs");
    {
        let mut stdin = xargs.stdin.take().unwrap();
        for i in 0..tasks {
            writeln!(stdin, "{i}").unwrap();
        }
    }
    assert!(
        xargs.wait().unwrap().success(),
        "runc run failed (is runc installed?)"
    );
    tasks as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let tasks = nums.first().copied().unwrap_or(1000);
    let parallelism = nums.get(1).copied().unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "bench", &ImageSpec::default());
    let skiff = skiff_rate(&layout, tasks, parallelism);
    let runc = runc_rate(&layout, tasks, parallelism);
    println!("task throughput, {tasks} tasks of `true` at parallelism {parallelism}");
    println!("  skiff execution:           {skiff:.1} tasks/s");
    println!("  runc run via xargs -P {parallelism}: {runc:.1} tasks/s");
    println!("  ratio skiff/runc: {:.2}   (target: >= 1)", skiff / runc);
}
