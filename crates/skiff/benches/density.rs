//! Density: N ready instances of the busybox httpd image at once (N services, each with
//! `--min-instances 1 --max-instances 1`), the server answering (`services list`) and the
//! ingress serving every one of them (a request per service). Prints Skiff's own cost per
//! instance: the PSS, private and RSS memory of every process Skiff adds per instance (the
//! shim; not the app), summed from `/proc/PID/smaps_rollup` and divided by N, with the shim's
//! private memory by mapping (from `/proc/PID/smaps`); and the server's RSS growth per
//! instance. Then what an instance made ahead of demand holds while it waits (its shim and the
//! container's waiting init), with five of them. Beside it, in the same run, the per-container
//! cost of conmon (with runc) and of containerd-shim-runc-v2 (containerd, through `ctr`), each
//! running the same image.
//!
//! `sudo cargo bench -p skiff --bench density [-- N [ANCHOR_CONTAINERS]]` (N defaults to 1000,
//! the anchors to 30 containers each; needs busybox-static, runc, conmon, skopeo, and installs
//! Debian's `containerd` with apt-get when it is missing).

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Memory of one process or a sum of them, in KiB, from `smaps_rollup`.
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    pss: u64,
    private: u64,
}

impl std::ops::AddAssign for Mem {
    fn add_assign(&mut self, o: Mem) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.private += o.private;
    }
}

impl Mem {
    /// Each figure per process of `n`, in MiB, as `PSS x MiB (private y, RSS z)`.
    fn per(&self, n: usize) -> String {
        let m = |k: u64| k as f64 / 1024.0 / n.max(1) as f64;
        format!(
            "PSS {:.3} MiB (private {:.3}, RSS {:.2})",
            m(self.pss),
            m(self.private),
            m(self.rss)
        )
    }
}

/// `/proc/PID/smaps_rollup`'s RSS, PSS and private (clean + dirty) figures.
fn rollup(pid: u32) -> Mem {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .sum()
    };
    Mem {
        rss: field("Rss:"),
        pss: field("Pss:"),
        private: field("Private_Clean:") + field("Private_Dirty:"),
    }
}

/// One process's private memory by mapping (KiB): the file's name, or `[heap]`, `[stack]`,
/// `[anon]`..., with `.data.rel.ro/.data` (written pages of a file) told from its text.
fn private_by_mapping(pid: u32) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut name = String::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()
            .is_some_and(|a| a.contains('-') && !a.ends_with(':'))
        {
            let perms = f.get(1).copied().unwrap_or("");
            let file = f.get(5).map_or("[anon]".to_string(), |p| {
                Path::new(p)
                    .file_name()
                    .map_or(p.to_string(), |n| n.to_string_lossy().into_owned())
            });
            name = format!("{file} {perms}");
        } else if let Some(v) = l
            .strip_prefix("Private_Dirty:")
            .or_else(|| l.strip_prefix("Private_Clean:"))
        {
            let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if kib > 0 {
                *out.entry(name.clone()).or_insert(0) += kib;
            }
        }
    }
    out
}

/// The pids whose command line (NUL-separated) satisfies `matches`.
fn pids_where(matches: impl Fn(&[&str]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let args: Vec<&str> = cmd.split('\0').collect();
        if matches(&args) {
            out.push(pid);
        }
    }
    out
}

/// A /20 for the instances' addresses that none of the host's routes covers (1 000
/// instances need more than a /24).
fn free_subnet() -> String {
    let routes = skiff_testkit::server::route_destinations();
    // Below the test kit's 10.200.0.0/13 range, so a test running at the same time never
    // collides with it.
    (0..16u32)
        .map(|i| (10u32 << 24) | (176 << 16) | (i << 12))
        .find(|base| {
            let mask = 0xffff_f000u32;
            !routes
                .iter()
                .any(|(dst, m)| base & m == *dst || dst & mask == *base)
        })
        .map(|b| format!("{}/20", std::net::Ipv4Addr::from(b)))
        .expect("a free /20 in 10.176.0.0/16 for the instances")
}

/// Runs `f` on `threads` threads over `0..n`; returns how many returned true.
fn parallel(n: usize, threads: usize, f: impl Fn(usize) -> bool + Sync) -> usize {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                if f(i) {
                    ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    ok.into_inner()
}

/// Skiff with `n` ready instances: prints its figures and returns the memory per instance.
fn skiff(layout: &Path, n: usize) -> Mem {
    let subnet = free_subnet();
    let s = TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_skiff")),
        &[
            "--network-subnet",
            &subnet,
            // Every request comes from 127.0.0.1.
            "--max-connections-per-client",
            "0",
        ],
    );
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    let server = s.pid().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let rss_before = skiff_testkit::server::rss_kib(server);
    let began = Instant::now();
    let deployed = parallel(n, 4, |i| {
        s.skiff(&[
            "deploy",
            &format!("d{i}"),
            "--image",
            "density",
            "--allow-unauthenticated",
            "--min-instances",
            "1",
            "--max-instances",
            "1",
        ])
        .status
        .success()
    });
    assert_eq!(deployed, n, "every deploy succeeds: {}", s.log());
    let data_dir = s.data_dir.display().to_string();
    let shims = || {
        pids_where(|a| {
            a.get(1) == Some(&"__shim") && a.get(2).is_some_and(|d| d.starts_with(&data_dir))
        })
    };
    s.wait_for("every instance ready", 600, || {
        let out = s.ok(&["instances", "list", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["instances"].as_array().map_or(0, |a| a.len()) >= n && shims().len() >= n
    });
    let ready_in = began.elapsed();
    let t = Instant::now();
    let list = s.ok(&["services", "list"]);
    let list_took = t.elapsed();
    let listed = list.lines().filter(|l| l.contains(" d")).count();
    let served_n = parallel(n, 8, |i| {
        skiff_testkit::server::status_of(
            s.ingress,
            &format!("d{i}.localhost"),
            "/",
            Duration::from_secs(60),
        ) == 200
    });
    let pids = shims();
    let mut total = Mem::default();
    for p in &pids {
        total += rollup(*p);
    }
    let rss_after = skiff_testkit::server::rss_kib(server);
    println!(
        "skiff: {n} services with one instance each ready in {:.1} s; services list answered in {:.0} ms ({listed} listed); the ingress served {served_n}/{n}",
        ready_in.as_secs_f64(),
        list_took.as_secs_f64() * 1000.0
    );
    println!(
        "  per instance: shim {} over {} shims",
        total.per(pids.len()),
        pids.len()
    );
    let growth = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    println!(
        "  server RSS {} MiB before, {} MiB with {n} instances: {growth:.1} KiB per instance",
        rss_before / 1024,
        rss_after / 1024,
    );
    println!(
        "  in all: {:.3} MiB per instance (the shims' PSS and the server's growth)",
        (total.pss as f64 / pids.len().max(1) as f64 + growth) / 1024.0
    );
    if let Some(p) = pids.first() {
        let mut by: Vec<(String, u64)> = private_by_mapping(*p).into_iter().collect();
        by.sort_by_key(|b| std::cmp::Reverse(b.1));
        let top: Vec<String> = by
            .iter()
            .take(8)
            .map(|(m, k)| format!("{m} {k} KiB"))
            .collect();
        println!("  one shim's private memory by mapping: {}", top.join(", "));
    }
    assert_eq!(served_n, n, "the ingress serves every instance");
    assert_eq!(listed, n, "services list lists every service: {list}");
    assert_eq!(pids.len(), n, "one shim per instance");
    total
}

/// The parent of `pid`, from `/proc/PID/stat` (0 if it is gone).
fn parent(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name in parentheses may hold spaces: the fields after it are plain.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Instances made ahead of demand (the server's default `--prepared-instances 8`): `m`
/// services each served once, so that each revision keeps one instance made ahead; prints what
/// one holds while it waits: its shim and the container's init (a clone of the shim, waiting
/// for `start`, so its command line is still the shim's).
fn made_ahead(layout: &Path, m: usize) {
    let subnet = free_subnet();
    let s = TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_skiff")),
        &["--network-subnet", &subnet, "--prepared-instances", "8"],
    );
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    for i in 0..m {
        let name = format!("p{i}");
        s.ok(&[
            "deploy",
            &name,
            "--image",
            "density",
            "--allow-unauthenticated",
        ]);
        assert!(
            skiff_testkit::server::status_of(
                s.ingress,
                &format!("{name}.localhost"),
                "/",
                Duration::from_secs(60)
            ) == 200,
            "{name} serves"
        );
    }
    let data_dir = s.data_dir.display().to_string();
    // (shim, waiting init) pairs: a process with the shim's command line whose parent is one.
    let waiting = || -> Vec<(u32, u32)> {
        let all = pids_where(|a| {
            a.get(1) == Some(&"__shim") && a.get(2).is_some_and(|d| d.starts_with(&data_dir))
        });
        all.iter()
            .filter_map(|p| {
                let up = parent(*p);
                all.contains(&up).then_some((up, *p))
            })
            .collect()
    };
    s.wait_for("an instance made ahead per service", 300, || {
        waiting().len() >= m
    });
    std::thread::sleep(Duration::from_secs(1));
    let pairs = waiting();
    let (mut shims, mut inits) = (Mem::default(), Mem::default());
    for (shim, init) in &pairs {
        shims += rollup(*shim);
        inits += rollup(*init);
    }
    let mut both = shims;
    both += inits;
    println!(
        "made ahead: each instance waiting for a request holds a shim {} and the container's init {}: {} in all ({} of them, beside {m} running)",
        shims.per(pairs.len()),
        inits.per(pairs.len()),
        both.per(pairs.len()),
        pairs.len()
    );
}

/// Removes `dir` once everything below it is unmounted.
fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Containers started under conmon (and runc), stopped and removed on drop.
struct Conmon {
    dir: PathBuf,
    ids: Vec<String>,
}

impl Conmon {
    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.dir.join("runc"));
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    }
}

impl Drop for Conmon {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.runc().args(["kill", id, "KILL"]).status();
        }
        for id in &self.ids {
            for _ in 0..50 {
                if self
                    .runc()
                    .args(["delete", "--force", id])
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unmount_below(&self.dir);
    }
}

/// `k` containers of the image under conmon + runc: conmon's memory per container.
fn conmon(layout: &Path, dir: &Path, k: usize) -> Mem {
    let mut c = Conmon {
        dir: dir.to_path_buf(),
        ids: Vec::new(),
    };
    let args: Vec<String> = ["httpd", "-f", "-p", "8080", "-h", "/www"]
        .map(String::from)
        .to_vec();
    let mut pids = Vec::new();
    for i in 0..k {
        let id = format!("skiff-density-{}-{i}", std::process::id());
        let b = dir.join(format!("b{i}"));
        std::fs::create_dir_all(&b).unwrap();
        skiff_testkit::runc::bundle(layout, &b, &args, true, false);
        let pidfile = b.join("conmon.pid");
        // As podman runs it: conmon runs `runc create`, stays as the container's parent
        // (holding its output and exit code), and the container is then started.
        let st = Command::new("conmon")
            .args(["--api-version", "1", "-c", &id, "-u", &id, "-n", &id])
            .arg("-r")
            .arg("/usr/sbin/runc")
            .arg("--runtime-arg")
            .arg(format!("--root={}", dir.join("runc").display()))
            .arg("-b")
            .arg(&b)
            .arg("-p")
            .arg(b.join("ctr.pid"))
            .arg("-P")
            .arg(&pidfile)
            .arg("-l")
            .arg(format!("k8s-file:{}", b.join("ctr.log").display()))
            .arg("--exit-dir")
            .arg(&b)
            .arg("--socket-dir-path")
            .arg(&b)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run conmon");
        assert!(st.success(), "conmon failed for {id}");
        c.ids.push(id.clone());
        // conmon's first process returns before `runc create` has finished: the container
        // exists once its pid file does.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.join("ctr.pid").exists() {
            assert!(
                Instant::now() < deadline,
                "runc create of {id} under conmon"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = c.runc().args(["start", &id]).status().unwrap();
        assert!(out.success(), "runc start {id}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        pids.push(pid);
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut total = Mem::default();
    for p in &pids {
        total += rollup(*p);
    }
    println!(
        "conmon {}: per container: {} over {k} containers",
        String::from_utf8_lossy(
            &Command::new("conmon")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("conmon version "),
        total.per(k)
    );
    total
}

/// A containerd started for the benchmark (its own root, state and socket), with the
/// containers it ran removed, stopped on drop.
struct Containerd {
    dir: PathBuf,
    child: std::process::Child,
    ids: Vec<String>,
    /// Whether `/run/containerd` (where the shims keep their sockets, fifos and runc's state
    /// whatever containerd's own state dir) was made by this run, to be removed with it.
    made_run_dir: bool,
}

impl Containerd {
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["--namespace", NAMESPACE]);
        c.stdin(Stdio::null());
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self
                .ctr()
                .args(["task", "kill", "--signal", "KILL", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for id in &self.ids {
            for _ in 0..50 {
                if self
                    .ctr()
                    .args(["task", "delete", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self
                .ctr()
                .args(["containers", "delete", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        // Shims of containers that did not go away with their task.
        let sock = self.dir.display().to_string();
        for p in
            pids_where(|a| a.iter().any(|x| x.contains(&sock)) && a[0].contains("containerd-shim"))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(&self.dir);
        // containerd's cgroup for the namespace, in each hierarchy (its containers' own went
        // with their tasks).
        for d in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(d.path().join(NAMESPACE));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(NAMESPACE));
        let run = Path::new("/run/containerd");
        if self.made_run_dir {
            let _ = std::fs::remove_dir_all(run);
        } else {
            let _ = std::fs::remove_dir_all(run.join("runc").join(NAMESPACE));
        }
    }
}

/// The containerd namespace the benchmark's containers live in.
const NAMESPACE: &str = "skiff-density";

/// `k` containers of the image through containerd (`ctr run -d`): the memory of the
/// containerd-shim-runc-v2 processes per container.
fn containerd(layout: &Path, dir: &Path, k: usize) -> Option<Mem> {
    if Command::new("containerd")
        .arg("--version")
        .output()
        .is_err()
    {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .status();
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "containerd"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("containerd: not installed and apt-get install containerd failed");
            return None;
        }
    }
    let version = String::from_utf8_lossy(
        &Command::new("containerd")
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .nth(2)
    .unwrap_or("")
    .to_string();
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("config.toml");
    // Only what `ctr run` needs: the CRI plugin (Kubernetes) stays off.
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\naddress = \"{0}/containerd.sock\"\n[ttrpc]\naddress = \"{0}/containerd.sock.ttrpc\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let made_run_dir = !Path::new("/run/containerd").exists();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start containerd");
    let mut c = Containerd {
        dir: dir.to_path_buf(),
        child,
        ids: Vec::new(),
        made_run_dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c
        .ctr()
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A docker archive tagged `density:latest`, which ctr names docker.io/library/density.
    let archive =
        skiff_testkit::image::skopeo_docker_archive(layout, &dir.join("density.tar"), "density");
    let out = c
        .ctr()
        .args(["images", "import"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr images import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..k {
        let id = format!("density{i}");
        let out = c
            .ctr()
            .args(["run", "-d", "docker.io/library/density:latest", &id])
            .args(["httpd", "-f", "-p", "8080", "-h", "/www"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.ids.push(id);
    }
    std::thread::sleep(Duration::from_secs(1));
    let sock = dir.display().to_string();
    let shims =
        pids_where(|a| a[0].contains("containerd-shim") && a.iter().any(|x| x.contains(&sock)));
    let mut total = Mem::default();
    for p in &shims {
        total += rollup(*p);
    }
    println!(
        "containerd {version}: containerd-shim-runc-v2 per container: {} ({} shims for {k} containers)",
        total.per(k),
        shims.len()
    );
    drop(c);
    Some(total)
}

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = nums.first().copied().unwrap_or(1000);
    let k = nums.get(1).copied().unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "density", &ImageSpec::default());
    let ours = skiff(&layout, n);
    made_ahead(&layout, 5);
    let theirs = conmon(&layout, &tmp.path().join("conmon"), k);
    let shim = containerd(&layout, &tmp.path().join("containerd"), k);
    let ratio = |a: Mem, an: usize, b: Mem, bn: usize| {
        (a.pss as f64 / an as f64) / (b.pss as f64 / bn as f64)
    };
    println!(
        "ratio: Skiff's PSS per instance / conmon's per container: {:.2}",
        ratio(ours, n, theirs, k)
    );
    if let Some(m) = shim {
        println!(
            "ratio: Skiff's PSS per instance / containerd-shim-runc-v2's per container: {:.2}",
            ratio(ours, n, m, k)
        );
    }
}
