//! Cold-start benchmark: a request to a service at zero instances, until its response, for a
//! busybox httpd image: with the server's defaults (an instance made ahead of demand, so only
//! the app starts on the request), with every instance created on the request
//! (`--prepared-instances 0`), and created on the request without instance networking
//! (`--no-instance-network`); beside `runc run` of the same image to its first response,
//! measured in the same run. Prints median and p99 of each and the ratio of the first to runc.
//! Then the same for a Python app (`python3 -m http.server` on a Debian image), beside the
//! app alone: the same command from the image's root file system under `chroot`, with no
//! container, to its first response (the floor no runtime can beat).
//!
//! `sudo cargo bench -p skiff --bench cold_start [-- ROUNDS]` (needs busybox-static, runc).

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One GET / on a fresh connection; true if the answer is `200`.
fn request(port: u16, host: &str) -> bool {
    skiff_testkit::server::status_of(port, host, "/", Duration::from_secs(30)) == 200
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let median = v[v.len() / 2];
    let p99 = v[((v.len() as f64 * 0.99).ceil() as usize).min(v.len()) - 1];
    (median, p99)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Cold starts through a server started with `extra` flags (instance networking is on unless
/// they turn it off).
fn skiff_cold_starts(layout: &Path, rounds: usize, extra: &[&str]) -> Vec<Duration> {
    let mut args = vec!["--scale-to-zero-after", "1ms"];
    args.extend_from_slice(extra);
    // The test kit turns instances made ahead off unless the flag is given: give the
    // server's default.
    if !extra.iter().any(|a| a.starts_with("--prepared-instances")) {
        args.extend_from_slice(&["--prepared-instances", "8"]);
    }
    let ahead = !extra.contains(&"--prepared-instances");
    let s = TestServer::start(Path::new(env!("CARGO_BIN_EXE_skiff")), &args);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    s.ok(&[
        "deploy",
        "bench",
        "--image",
        "bench",
        "--allow-unauthenticated",
    ]);
    let mut out = Vec::new();
    for _ in 0..rounds {
        s.wait_for("zero instances", 30, || s.instances("bench").is_empty());
        if ahead {
            // The instance made ahead of demand: the one instance directory left.
            s.wait_for("an instance made ahead", 30, || {
                std::fs::read_dir(s.data_dir.join("run/i")).is_ok_and(|d| d.count() == 1)
            });
        }
        let t = Instant::now();
        assert!(
            request(s.ingress, "bench.localhost"),
            "cold request failed: {}",
            s.log()
        );
        out.push(t.elapsed());
    }
    println!(
        "  steps of the starts with {extra:?}: {}",
        skiff_testkit::start_step_medians(&s.log())
    );
    out
}

fn runc_cold_starts(layout: &Path, rounds: usize) -> Vec<Duration> {
    let bundle = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = ["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/www"].map(String::from);
    // The host's network namespace, so the benchmark reaches it without any setup.
    skiff_testkit::runc::bundle(layout, bundle.path(), &args, false, true);
    let mut out = Vec::new();
    for i in 0..rounds {
        let id = format!("skiff-bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let status = Command::new("runc")
            .args(["run", "-d", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runc is missing: apt-get install runc");
        assert!(status.success(), "runc run failed");
        while !request(port, "localhost") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "runc container never answered"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        out.push(t.elapsed());
        skiff_testkit::run(Command::new("runc").args(["delete", "-f", &id]));
    }
    out
}

/// `python3 -m http.server` run straight from the image's root file system (`chroot`, on the
/// host's network, no container), to its first response, `rounds` times: the Python app's own
/// start, the floor no runtime can beat.
fn python_alone(layout: &Path, rounds: usize) -> Vec<Duration> {
    let bundle = tempfile::tempdir().unwrap();
    skiff_testkit::runc::bundle(layout, bundle.path(), &[], false, true);
    let mut out = Vec::new();
    for _ in 0..rounds {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Instant::now();
        let mut child = Command::new("/usr/sbin/chroot")
            .arg(bundle.path().join("rootfs"))
            .args(["python3", "-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chroot");
        while !request(port, "localhost") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "python never answered"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        out.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    out
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(25);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "bench", &ImageSpec::default());
    let skiff = skiff_cold_starts(&layout, rounds, &[]);
    let on_demand = skiff_cold_starts(&layout, rounds, &["--prepared-instances", "0"]);
    let bare = skiff_cold_starts(
        &layout,
        rounds,
        &["--no-instance-network", "--prepared-instances", "0"],
    );
    let runc = runc_cold_starts(&layout, rounds);
    let (sm, sp) = stats(skiff);
    let (dm, dp) = stats(on_demand);
    let (bm, bp) = stats(bare);
    let (rm, rp) = stats(runc);
    println!("cold start, busybox httpd, {rounds} rounds each");
    println!(
        "  skiff (request at zero instances → response): median {}  p99 {}",
        ms(sm),
        ms(sp)
    );
    println!(
        "  skiff, created on the request:                 median {}  p99 {}",
        ms(dm),
        ms(dp)
    );
    println!(
        "  skiff without instance network (loopback):     median {}  p99 {}",
        ms(bm),
        ms(bp)
    );
    println!(
        "  runc run → first response:                     median {}  p99 {}",
        ms(rm),
        ms(rp)
    );
    println!(
        "  ratio skiff/runc: median {:.2}  p99 {:.2}   (target: skiff median ≤ 10 ms, ≤ 0.3 × runc)",
        sm.as_secs_f64() / rm.as_secs_f64(),
        sp.as_secs_f64() / rp.as_secs_f64()
    );

    // A Python app: its interpreter's start dominates, and is the floor.
    let spec = ImageSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["exec python3 -m http.server $PORT".into()],
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        files: vec![],
        user: None,
        binaries: vec![],
    };
    let python = skiff_testkit::debian_image(
        &tmp.path().join("python"),
        "bench",
        &["python3", "python3-pip"],
        &[],
        &spec,
    );
    let py_rounds = rounds.min(10);
    let (pm, pp) = stats(skiff_cold_starts(&python, py_rounds, &[]));
    let (qm, qp) = stats(skiff_cold_starts(
        &python,
        py_rounds,
        &["--prepared-instances", "0"],
    ));
    let (hm, hp) = stats(python_alone(&python, py_rounds));
    println!("cold start, python3 -m http.server on Debian, {py_rounds} rounds each");
    println!(
        "  skiff, made ahead:            median {}  p99 {}",
        ms(pm),
        ms(pp)
    );
    println!(
        "  skiff, created on the request: median {}  p99 {}",
        ms(qm),
        ms(qp)
    );
    println!(
        "  the app alone (chroot, no container): median {}  p99 {}",
        ms(hm),
        ms(hp)
    );
    println!(
        "  skiff made ahead above the app alone: median {:+.1} ms",
        (pm.as_secs_f64() - hm.as_secs_f64()) * 1000.0
    );
}
