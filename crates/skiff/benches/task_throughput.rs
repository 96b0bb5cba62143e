//! Task throughput at two execution sizes: one execution of SMALL tasks of `true`, then one of
//! LARGE tasks (Cloud Run's limit is 10 000), at parallelism P, each beside the same number of
//! containers started with `runc run` through `xargs -P P` in the same run. For each size it
//! prints tasks per second of both, their ratio, and the server's own CPU time per task
//! (user + system, from `/proc/PID/stat`; the shims and the apps are other processes). Then
//! the time `skiff jobs executions describe` takes on the large execution (the CLI process,
//! start to exit), and a control API `GET` of it.
//!
//! `sudo cargo bench -p skiff --bench task_throughput [-- SMALL [LARGE [PARALLELISM]] [SERVER
//! FLAGS...]]`
//! (defaults 500 10000 50; needs runc). The control plane is linear when tasks/s at LARGE is
//! at least tasks/s at SMALL.

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The server's own CPU time so far (user + system), from `/proc/PID/stat` fields 14 and 15.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server's stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f[11] + f[12];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

struct SkiffRun {
    tasks_per_s: f64,
    cpu_ms_per_task: f64,
    execution: String,
}

fn skiff_run(s: &TestServer, job: &str, tasks: u64, parallelism: u64) -> SkiffRun {
    s.ok(&[
        "jobs",
        "create",
        job,
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
    let pid = s.pid().expect("server running");
    let cpu0 = cpu_time(pid);
    let t = Instant::now();
    s.ok(&["jobs", "execute", job, "--wait"]);
    let elapsed = t.elapsed().as_secs_f64();
    let cpu = cpu_time(pid) - cpu0;
    let v: serde_json::Value = serde_json::from_str(&s.ok(&[
        "jobs",
        "executions",
        "list",
        "--job",
        job,
        "--format",
        "json",
    ]))
    .expect("executions as JSON");
    let e = &v["items"][0];
    let succeeded = e["status"]["succeededCount"].as_u64().unwrap_or(0);
    assert_eq!(succeeded, tasks, "every task succeeds: {e}");
    SkiffRun {
        tasks_per_s: tasks as f64 / elapsed,
        cpu_ms_per_task: cpu.as_secs_f64() * 1000.0 / tasks as f64,
        execution: e["metadata"]["name"].as_str().unwrap_or_default().into(),
    }
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

/// Median and p99 of `n` timings of `f`, in ms.
fn timed(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut ms: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[n / 2], ms[(n * 99 / 100).min(n - 1)])
}

fn main() {
    // Flags after the numbers go to `skiff server`, to compare settings in one build.
    let (nums, flags) = skiff_testkit::bench_args();
    let server_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let small = nums.first().copied().unwrap_or(500);
    let large = nums.get(1).copied().unwrap_or(10_000);
    let parallelism = nums.get(2).copied().unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "bench", &ImageSpec::default());
    let s = TestServer::start(Path::new(env!("CARGO_BIN_EXE_skiff")), &server_args);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    println!("task throughput, tasks of `true` at parallelism {parallelism}");
    if !server_args.is_empty() {
        println!("  server flags: {}", server_args.join(" "));
    }
    let mut rates = Vec::new();
    let mut last = String::new();
    for (job, n) in [("small", small), ("large", large)] {
        let sk = skiff_run(&s, job, n, parallelism);
        let runc = runc_rate(&layout, n, parallelism);
        println!(
            "  {n} tasks: skiff execution {:.1} tasks/s, server CPU {:.2} ms/task; runc run via xargs -P {parallelism}: {runc:.1} tasks/s; ratio skiff/runc {:.2}",
            sk.tasks_per_s,
            sk.cpu_ms_per_task,
            sk.tasks_per_s / runc
        );
        rates.push(sk.tasks_per_s);
        last = sk.execution;
    }
    println!(
        "  linear: tasks/s at {large} / tasks/s at {small}: {:.2}   (target: >= 1)",
        rates[1] / rates[0]
    );
    let (d50, d99) = timed(20, || {
        s.ok(&["jobs", "executions", "describe", &last]);
    });
    println!("  executions describe, {large} tasks: median {d50:.1} ms  p99 {d99:.1} ms   (target: < 100 ms)");
    let path = format!("/apis/run.googleapis.com/v1/namespaces/default/executions/{last}");
    let (g50, g99) = timed(20, || {
        let (code, body) = s.api("GET", &path, None);
        assert_eq!(code, 200, "{body}");
    });
    println!("  GET execution, {large} tasks: median {g50:.1} ms  p99 {g99:.1} ms");
}
