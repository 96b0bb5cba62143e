//! `TestRegistry`: Debian's `docker-registry` (the reference distribution registry) on a free
//! loopback port with a temporary config and storage, optionally behind htpasswd basic auth,
//! and `push`, which copies an OCI layout into it with the real `skopeo`. Dropping it kills
//! the registry and removes its storage.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestRegistry {
    /// `127.0.0.1:PORT`, the registry host as image references name it.
    pub host: String,
    /// `(user, password)` when the registry wants them.
    pub creds: Option<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestRegistry {
    /// Starts an open registry.
    pub fn start() -> TestRegistry {
        Self::start_with(None)
    }

    /// Starts a registry that wants `user`/`password` (htpasswd basic auth).
    pub fn with_password(user: &str, password: &str) -> TestRegistry {
        Self::start_with(Some((user.to_string(), password.to_string())))
    }

    /// Starts an open registry that serves HTTPS only, with `cert` (PEM chain) and `key`
    /// (docker-registry's `http.tls.certificate` and `http.tls.key`).
    pub fn with_tls(cert: &Path, key: &Path) -> TestRegistry {
        Self::start_configured(
            None,
            &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
        )
    }

    fn start_with(creds: Option<(String, String)>) -> TestRegistry {
        Self::start_configured(creds, "")
    }

    fn start_configured(creds: Option<(String, String)>, http_extra: &str) -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir_in("/tmp")
            .unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let auth = match &creds {
            Some((u, p)) => {
                let line = crate::run(Command::new("htpasswd").args(["-Bbn", u, p]));
                std::fs::write(dir.path().join("htpasswd"), line.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{auth}",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry: apt-get install docker-registry");
        let mut r = TestRegistry {
            host: format!("127.0.0.1:{port}"),
            creds,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !crate::server::listening(port) {
            if let Some(status) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited with {status}: {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Copies the OCI layout at `layout` (its one image) to `REPO:TAG` in this registry with
    /// `skopeo copy`; returns the full reference `127.0.0.1:PORT/REPO:TAG`.
    pub fn push(&self, layout: &Path, repo_tag: &str) -> String {
        let reference = format!("{}/{repo_tag}", self.host);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(format!("oci:{}", layout.display()))
            .arg(format!("docker://{reference}"));
        crate::run(&mut cmd);
        reference
    }

    /// Stops the registry (it stays stopped; storage is kept until drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request a [`CuttingProxy`] passed on: its request line (`GET /v2/... HTTP/1.1`) and
/// its `Range` header, if any.
#[derive(Debug, Clone)]
pub struct ProxiedRequest {
    pub line: String,
    pub range: Option<String>,
}

/// A plain TCP proxy in front of a registry (GET and HEAD only, one request a connection)
/// that cuts the connection part-way through the first blob download longer than `after`
/// bytes (response head included): a registry whose connection breaks mid-layer. It records
/// every request. Dropping it stops it.
pub struct CuttingProxy {
    /// `127.0.0.1:PORT`, to name images by instead of the registry's host.
    pub host: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<ProxiedRequest>>>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CuttingProxy {
    /// A proxy to `upstream` (`HOST:PORT`) cutting one blob download after `after` bytes.
    pub fn start(upstream: &str, after: usize) -> CuttingProxy {
        Self::start_with(upstream, after, false)
    }

    /// [`CuttingProxy::start`], and every answer to a request with a `Range` header has its
    /// first body byte flipped: a registry that resumes with the wrong bytes.
    pub fn start_corrupting_resumes(upstream: &str, after: usize) -> CuttingProxy {
        Self::start_with(upstream, after, true)
    }

    fn start_with(upstream: &str, after: usize, corrupt: bool) -> CuttingProxy {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, st, up) = (
            requests.clone(),
            cuts.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, c, up) = (r.clone(), c.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, &up, after, corrupt, &r, &c);
                });
            }
        });
        CuttingProxy {
            host,
            requests,
            cuts,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests passed on so far.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// How many downloads were cut (0 or 1).
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(&self.host);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Passes one request on to `upstream` with `Connection: close` and copies the answer back,
/// cutting it after `after` bytes if it is the first long blob download.
fn proxy_one(
    client: std::net::TcpStream,
    upstream: &str,
    after: usize,
    corrupt: bool,
    requests: &std::sync::Mutex<Vec<ProxiedRequest>>,
    cuts: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    // A TLS handshake (a client checking for HTTPS first, as Docker's rule for loopback
    // registries does): this proxy speaks plain HTTP only, so the connection is closed.
    if reader.fill_buf()?.first() == Some(&0x16) {
        return Ok(());
    }
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line.trim_end().to_string();
    let mut head = format!("{request_line}\r\n");
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if lower.starts_with("range:") {
            range = Some(h[6..].trim().to_string());
        }
        head.push_str(&h);
    }
    head.push_str("Connection: close\r\n\r\n");
    let ranged = range.is_some();
    requests.lock().unwrap().push(ProxiedRequest {
        line: request_line.clone(),
        range,
    });
    let mut up = std::net::TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.write_all(head.as_bytes())?;
    let mut client = client;
    if corrupt && ranged {
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            if let Some(b) = answer.get_mut(i + 4) {
                *b ^= 0xff;
            }
        }
        client.write_all(&answer)?;
        return client.shutdown(std::net::Shutdown::Both);
    }
    let may_cut = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");
    let mut sent = 0usize;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if may_cut
            && sent + n > after
            && cuts
                .compare_exchange(
                    0,
                    1,
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                )
                .is_ok()
        {
            client.write_all(&buf[..after - sent])?;
            client.flush()?;
            // A reset rather than an orderly close, as a broken connection looks.
            let _ = socket_linger_zero(&client);
            drop(client);
            return Ok(());
        }
        client.write_all(&buf[..n])?;
        sent += n;
    }
    client.flush()?;
    client.shutdown(std::net::Shutdown::Both)
}

/// `SO_LINGER` 0, so that closing the socket sends a reset.
fn socket_linger_zero(s: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a `linger` struct of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
