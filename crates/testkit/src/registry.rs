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

    fn start_with(creds: Option<(String, String)>) -> TestRegistry {
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
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
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
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
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
