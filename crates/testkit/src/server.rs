//! `TestServer`: the real `skiff server` in a temporary data dir on free loopback ports, with
//! helpers to run the real CLI against it and to send ingress requests. Dropping it stops the
//! server with SIGTERM (SIGKILL if it hangs), so no test leaves instances running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub ingress: u16,
    pub api: u16,
    /// The Pub/Sub listener's port (`--pubsub`).
    pub pubsub: u16,
    args: Vec<String>,
    child: Option<Child>,
    /// The instance subnet this server was given (`None` with `--no-instance-network`).
    pub subnet: Option<String>,
}

/// A /24 instance subnet for one test server, chosen from its data dir so that servers
/// running at once (several tests, several test binaries) do not collide; none of the
/// machine's routes may overlap it.
fn test_subnet(data_dir: &Path, attempt: u32) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{}#{attempt}", data_dir.display()));
    let n = u16::from_be_bytes([d[0], d[1]]) % (56 * 256);
    format!("10.{}.{}.0/24", 200 + n / 256, n % 256)
}

/// The host's IPv4 routes as `(destination, mask)` in host byte order (`/proc/net/route`),
/// default routes left out: what an instance subnet must not overlap.
pub fn route_destinations() -> Vec<(u32, u32)> {
    std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            Some((u32::from_be(dst), u32::from_be(mask)))
        })
        .filter(|(_, mask)| *mask != 0)
        .collect()
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/PID/status`); 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// One KiB figure of `/proc/PID/status` (`VmRSS`, `RssAnon`: the heap and stacks, `RssFile`:
/// pages of the executable and other mapped files); 0 if the process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A free loopback port.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Whether a listener accepts on `127.0.0.1:port`. A connection that reached itself does not
/// count: a loopback connect to a free port in the ephemeral range can pick that very port as
/// its source, and TCP's simultaneous open then connects it to itself.
pub fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .is_ok_and(|c| c.local_addr().ok() != c.peer_addr().ok())
}

/// The status code of a plain HTTP/1.1 GET of `path` to `127.0.0.1:port` with `Host: host`, on
/// a connection of its own, waiting at most `timeout` for the answer; 0 when none came (no
/// listener, a closed connection, a timeout). For benchmarks, which count failures rather
/// than stop at the first.
pub fn status_of(port: u16, host: &str, path: &str, timeout: Duration) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    std::str::from_utf8(buf.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP/1.1 GET to `127.0.0.1:port` with `Host: host`, on a connection of its own,
/// not following redirects: `(status, head)` (status 0 when nothing parsable came back).
pub fn get_head(port: u16, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = out.split("\r\n\r\n").next().unwrap_or("").to_string();
    (status, head)
}

/// `N` distinct free loopback ports (all are held until all are chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

impl TestServer {
    /// Starts a server with extra `skiff server` flags, e.g. `["--scale-to-zero-after", "2s"]`.
    pub fn start(bin: &Path, args: &[&str]) -> TestServer {
        TestServer::start_with_ingress(bin, None, args)
    }

    /// Like [`TestServer::start`], with the HTTP ingress on `127.0.0.1:ingress` when given
    /// (for a peer that must know the port before the server starts, such as an ACME CA).
    pub fn start_with_ingress(bin: &Path, ingress: Option<u16>, args: &[&str]) -> TestServer {
        let tmp = tempfile::Builder::new()
            .prefix("skiff-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let [free_ingress, api, pubsub] = free_ports::<3>();
        let ingress = ingress.unwrap_or(free_ingress);
        let own_network = args
            .iter()
            .any(|a| *a == "--no-instance-network" || *a == "--network-subnet");
        let subnet = (!own_network).then(|| {
            let routes = route_destinations();
            (0..64)
                .map(|i| test_subnet(tmp.path(), i))
                .find(|s| {
                    let base: std::net::Ipv4Addr = s.trim_end_matches("/24").parse().unwrap();
                    let base = u32::from(base);
                    !routes
                        .iter()
                        .any(|(dst, mask)| base & mask == *dst || dst & 0xffff_ff00 == base)
                })
                .expect("a free /24 for the test server's instances")
        });
        let mut s = TestServer {
            subnet,
            bin: bin.to_path_buf(),
            data_dir: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
            ingress,
            api,
            pubsub,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--ingress")
            .arg(format!("127.0.0.1:{}", self.ingress))
            .arg("--api")
            .arg(format!("127.0.0.1:{}", self.api))
            .arg("--pubsub")
            .arg(format!("127.0.0.1:{}", self.pubsub))
            .args(&self.args)
            // Instances made ahead of demand hold a shim, a cgroup and a network sandbox per
            // revision, which tests counting what an instance leaves behind would see; a test
            // that wants them names the flag.
            .args(
                (!self
                    .args
                    .iter()
                    .any(|a| a.starts_with("--prepared-instances")))
                .then_some(["--prepared-instances", "0"])
                .into_iter()
                .flatten(),
            )
            .args(
                self.subnet
                    .iter()
                    .flat_map(|s| ["--network-subnet".to_string(), s.clone()]),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start skiff server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.api_listening() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("skiff server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "skiff server did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether this server's API accepts connections. The server writes its admin token before
    /// it listens, so a listener without the token is not this server.
    fn api_listening(&self) -> bool {
        listening(self.api) && self.data_dir.join("admin.token").exists()
    }

    /// Starts a server with the default test image (busybox httpd with its CGI scripts,
    /// [`crate::ImageSpec::default`]) imported as `web:latest`. The directory returned holds
    /// the image's layout; keep it as long as the test runs.
    pub fn with_web_image(bin: &Path, args: &[&str]) -> (TestServer, tempfile::TempDir) {
        TestServer::with_web_image_on(bin, None, args)
    }

    /// [`TestServer::with_web_image`] with the HTTP ingress on a given port.
    pub fn with_web_image_on(
        bin: &Path,
        ingress: Option<u16>,
        args: &[&str],
    ) -> (TestServer, tempfile::TempDir) {
        let s = TestServer::start_with_ingress(bin, ingress, args);
        let tmp = tempfile::tempdir().unwrap();
        let layout =
            crate::busybox_image(&tmp.path().join("web"), "web", &crate::ImageSpec::default());
        s.ok(&["images", "import", layout.to_str().unwrap()]);
        (s, tmp)
    }

    /// Deploys a public service from the image `web` with `extra` flags; returns the output.
    pub fn deploy_web(&self, service: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "deploy",
            service,
            "--image",
            "web",
            "--allow-unauthenticated",
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// The server's own log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Runs the CLI against this server.
    pub fn skiff(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", self.api))
            .env("SKIFF_DATA_DIR", &self.data_dir)
            .env_remove("SKIFF_TOKEN")
            .env_remove("SKIFF_PROJECT")
            .output()
            .unwrap()
    }

    /// Runs the CLI, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.skiff(args);
        assert!(
            out.status.success(),
            "skiff {args:?} failed: {}\nstderr: {}\nserver log: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.skiff(args);
        assert!(
            !out.status.success(),
            "skiff {args:?} should fail but printed {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Pushes the OCI layout `layout` into the server's own registry as `name` (`REPO:TAG`)
    /// with `skopeo`, as a user would push a base image; returns its reference there
    /// (`127.0.0.1:API/REPO:TAG`). Panics if the push fails.
    pub fn push_layout(&self, layout: &Path, name: &str) -> String {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap();
        let reference = format!("127.0.0.1:{}/{name}", self.api);
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("skiff:{}", token.trim()),
                &format!("oci:{}", layout.display()),
                &format!("docker://{reference}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }

    /// An ingress request: `(status, body)`.
    pub fn get(&self, host: &str, path: &str, token: Option<&str>) -> (u16, String) {
        http_get(self.ingress, host, path, token)
    }

    /// Runs a shell command inside an instance of `service` (public, from the default test
    /// image) through its `/cgi-bin/sh` script; returns what it printed. Panics unless 200.
    pub fn sh(&self, service: &str, cmd: &str) -> String {
        let q: String = cmd
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let host = format!("{service}.localhost");
        let (code, body) = self.get(&host, &format!("/cgi-bin/sh?{q}"), None);
        assert_eq!(code, 200, "{cmd}: {body}");
        body
    }

    /// A control API call with the admin token, bypassing the CLI: `(status, body)`.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token")).unwrap();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client
            .request(method, format!("http://127.0.0.1:{}{path}", self.api))
            .bearer_auth(token.trim());
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        match req.send() {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// Stops the server with SIGKILL: no cleanup of its own runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it; returns its exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data dir and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.spawn();
    }

    /// Starts the server again on the same data dir and ports with other extra arguments
    /// (for flags that name the server's own ports, such as a base image in its registry).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// What of this server is still on the machine: processes that mention the data dir,
    /// mounts under it, and cgroups of its instances.
    pub fn leftovers(&self) -> Vec<String> {
        let dir = self.data_dir.display().to_string();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains(&dir) && !cmd.contains(" server ") {
                    found.push(format!(
                        "process {}: {cmd}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        for line in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
        {
            if line.contains(&dir) {
                found.push(format!("mount: {line}"));
            }
        }
        let ids: Vec<String> = std::fs::read_dir(self.data_dir.join("run/i"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            found.push(format!("instance dir: {id}"));
        }
        // Source builds' cgroups (`skiff-builds-<server id>` in any hierarchy).
        let builds = format!("skiff-builds-{}", skiff_network::server_id(&self.data_dir));
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            if h.path().join(&builds).exists() {
                found.push(format!(
                    "build cgroup: {}",
                    h.path().join(&builds).display()
                ));
            }
        }
        let (bridge, table, veth) = self.network_names();
        for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == bridge || name.starts_with(&veth) {
                found.push(format!("link: {name}"));
            }
        }
        let tables = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for line in tables.lines() {
            if line.split_whitespace().last() == Some(table.as_str()) {
                found.push(format!("nftables: {line}"));
            }
        }
        found
    }

    /// The names of this server's bridge, nftables tables and veth prefix.
    fn network_names(&self) -> (String, String, String) {
        skiff_network::names(&self.data_dir)
    }

    /// Removes what a killed server left of its network (a stopped one removes it itself).
    fn sweep_network(&self) {
        let (bridge, table, _) = self.network_names();
        if Path::new("/sys/class/net").join(&bridge).exists() {
            let _ = Command::new("ip").args(["link", "del", &bridge]).status();
        }
        for family in ["inet", "bridge"] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &table])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// [`Self::leftovers`] of instances only: while the server runs, its bridge, rules and the
    /// network sandboxes it made ahead are there by design.
    pub fn instance_leftovers(&self) -> Vec<String> {
        // The tmpfs the server keeps at DATA/run while it runs is the instances' home, not an
        // instance's.
        let run = format!(" {}/run ", self.data_dir.display());
        self.leftovers()
            .into_iter()
            .filter(|l| !l.starts_with("link: ") && !l.starts_with("nftables: "))
            .filter(|l| !(l.starts_with("mount: ") && l.contains(&run)))
            .collect()
    }

    /// Instance ids of a service, from `skiff instances list --format json`.
    pub fn instances(&self, service: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&[
            "instances",
            "list",
            "--service",
            service,
            "--format",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["instances"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `cond` every 50 ms until it holds, or panics after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nserver log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
        self.sweep_network();
        // A server killed and not restarted leaves its run tmpfs mounted.
        let _ = nix::mount::umount2(&self.data_dir.join("run"), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
    }
}

/// An HTTP/1.1 request to the ingress on `port` with the given Host header.
pub fn http_get(port: u16, host: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut req = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("Host", host);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send() {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// `POST http://127.0.0.1:port/path` with a JSON body; returns the status and body.
pub fn http_post_json(port: u16, path: &str, body: &serde_json::Value) -> (u16, String) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    match client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .json(body)
        .send()
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// The median of each step of instance starts over a server log's `ready in TOTAL: STEP Xms,
/// ...` lines, as `N, median ms: ready T, network A, spawn B, ...` (N: the lines read); the
/// starts of instances made ahead of demand count apart, their steps named `ahead: ...`.
pub fn start_step_medians(log: &str) -> String {
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    let mut n = 0;
    for line in log.lines() {
        let Some(rest) = line.split(" ready in ").nth(1) else {
            continue;
        };
        n += 1;
        let (total, detail) = rest.split_once(": ").unwrap_or((rest, ""));
        let (total, group) = match total.strip_suffix(" (made ahead of demand)") {
            Some(t) => (t, "ahead: "),
            None => (total, ""),
        };
        // Up to the log line's fields (`instance=...`, perhaps in colour).
        let detail = detail.split([' ', '\x1b']).collect::<Vec<_>>();
        let detail = detail
            .iter()
            .take_while(|w| !w.is_empty() && !w.starts_with("instance"))
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let parts =
            std::iter::once(format!("ready {total}")).chain(detail.split(", ").map(str::to_string));
        for part in parts {
            let Some((name, v)) = part.trim().rsplit_once(' ') else {
                continue;
            };
            let Some(ms) = v.split("ms").next().and_then(|x| x.parse::<f64>().ok()) else {
                continue;
            };
            let name = format!("{group}{name}");
            match steps.iter_mut().find(|(s, _)| *s == name) {
                Some((_, v)) => v.push(ms),
                None => steps.push((name, vec![ms])),
            }
        }
    }
    let medians: Vec<String> = steps
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            format!("{name} {:.1}", v[v.len() / 2])
        })
        .collect();
    format!("{n}, median ms: {}", medians.join(", "))
}
