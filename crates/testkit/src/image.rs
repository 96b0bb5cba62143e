//! Test images: a busybox rootfs (the static binary from Debian's `busybox-static` with applet
//! links), a web root with CGI scripts, written as an OCI image layout by hand, and converted
//! to OCI and docker archives with `skopeo` when a test wants what real tools make.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const APPLETS: &[&str] = &[
    "sh", "env", "hostname", "ls", "cat", "sleep", "wget", "ps", "nc", "httpd", "echo", "id",
    "kill", "true", "false", "head", "dd", "mount", "grep", "unshare",
];

/// What goes into a test image besides busybox.
pub struct ImageSpec {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// `(path in the image, contents, mode)`.
    pub files: Vec<(String, String, u32)>,
    pub user: Option<String>,
    /// Host executables copied into the image as `/app/NAME` (NAME: the file's name; see
    /// [`app_path`]), with the shared libraries `ldd` lists for them at their host paths (so a
    /// test can run a binary built for the host, such as its own). Not at the host path: a
    /// checkout under `/tmp` would put it under the container's own tmpfs `/tmp`, hiding it.
    pub binaries: Vec<PathBuf>,
}

impl Default for ImageSpec {
    /// An httpd on $PORT serving /www, with CGI scripts: `/cgi-bin/env` prints the
    /// environment, `/cgi-bin/sh?CMD` runs a shell command, `/cgi-bin/sleep?N` sleeps.
    fn default() -> Self {
        ImageSpec {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            // A shell as pid 1 with a TERM trap, as a real app would handle SIGTERM.
            cmd: vec![
                "echo listening on $PORT; httpd -f -v -p $PORT -h /www & trap 'kill $!; exit 0' TERM; wait"
                    .into(),
            ],
            env: vec!["PATH=/bin".into(), "IMAGE_VAR=from-image".into()],
            files: vec![
                ("www/index.html".into(), "hello from skiff\n".into(), 0o644),
                (
                    "www/cgi-bin/env".into(),
                    "#!/bin/sh\necho Content-Type: text/plain\necho\nenv\n".into(),
                    0o755,
                ),
                (
                    "www/cgi-bin/sh".into(),
                    "#!/bin/sh\necho Content-Type: text/plain\necho\nCMD=$(httpd -d \"$QUERY_STRING\")\nsh -c \"$CMD\" 2>&1\n".into(),
                    0o755,
                ),
                (
                    "www/cgi-bin/sleep".into(),
                    "#!/bin/sh\nsleep \"$QUERY_STRING\"\necho Content-Type: text/plain\necho\necho slept\n".into(),
                    0o755,
                ),
            ],
            user: None,
            binaries: Vec::new(),
        }
    }
}

impl ImageSpec {
    /// An image whose app is the running executable (a test or bench binary that serves on
    /// `$PORT` when the environment variable `var` is set, as the image sets it to `1`), with
    /// its shared libraries ([`ImageSpec::binaries`]).
    pub fn current_exe_app(var: &str) -> ImageSpec {
        let exe = std::env::current_exe().expect("the running executable's path");
        ImageSpec {
            entrypoint: vec![app_path(&exe)],
            cmd: vec![],
            env: vec!["PATH=/bin".into(), format!("{var}=1")],
            binaries: vec![exe],
            ..ImageSpec::default()
        }
    }
}

/// Where [`ImageSpec::binaries`] puts the host executable `bin` in the image.
pub fn app_path(bin: &Path) -> String {
    format!("/app/{}", bin.file_name().unwrap().to_str().unwrap())
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Builds the image as an OCI layout at `dir` (tag `latest`, ref name `name:latest`).
pub fn busybox_image(dir: &Path, name: &str, spec: &ImageSpec) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static (.ci/run does)"
    );
    let mut builder = tar::Builder::new(Vec::new());
    let dir_entry = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for d in [
        "bin",
        "www",
        "www/cgi-bin",
        "etc",
        "tmp",
        "proc",
        "sys",
        "dev",
    ] {
        dir_entry(&mut builder, d);
    }
    let data = std::fs::read(busybox).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    builder
        .append_data(&mut h, "bin/busybox", &data[..])
        .unwrap();
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_mtime(0);
        builder
            .append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    let mut dirs_made = std::collections::BTreeSet::new();
    for bin in &spec.binaries {
        for host in std::iter::once(bin.clone()).chain(shared_libraries(bin)) {
            let inside = if host == *bin {
                PathBuf::from(&app_path(bin)[1..])
            } else {
                host.strip_prefix("/").unwrap_or(&host).to_path_buf()
            };
            for anc in inside
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if !anc.as_os_str().is_empty() && dirs_made.insert(anc.to_path_buf()) {
                    dir_entry(&mut builder, anc.to_str().unwrap());
                }
            }
            let data = if host == *bin {
                stripped(bin)
            } else {
                std::fs::read(&host).unwrap()
            };
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o755);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            builder.append_data(&mut h, &inside, &data[..]).unwrap();
        }
    }
    let mut files = spec.files.clone();
    files.push((
        "etc/passwd".into(),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".into(),
        0o644,
    ));
    files.push((
        "etc/group".into(),
        "root:x:0:\nnogroup:x:65534:\n".into(),
        0o644,
    ));
    for (path, contents, mode) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(contents.len() as u64);
        h.set_mtime(0);
        builder
            .append_data(&mut h, path, contents.as_bytes())
            .unwrap();
    }
    let layer_tar = builder.into_inner().unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer = Layer::from_tar(&layer_tar, &blobs);
    let config = serde_json::json!({
        "Entrypoint": spec.entrypoint, "Cmd": spec.cmd, "Env": spec.env,
        "WorkingDir": "/", "User": spec.user.clone().unwrap_or_default(),
    });
    write_layout(dir, name, &[layer], config)
}

/// A gzip-compressed layer blob ready for an image layout.
pub struct Layer {
    /// The compressed blob's file.
    pub blob: PathBuf,
    /// sha256 hex of the compressed blob (its digest in the manifest).
    pub digest: String,
    /// sha256 hex of the uncompressed tar (its diff_id in the image config).
    pub diff_id: String,
    /// The compressed blob's size in bytes.
    pub size: u64,
}

impl Layer {
    /// Compresses a layer tar held in memory into `blobs/<digest>`.
    pub fn from_tar(tar: &[u8], blobs: &Path) -> Layer {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(tar).unwrap();
        let data = gz.finish().unwrap();
        let digest = sha(&data);
        let blob = blobs.join(&digest);
        std::fs::write(&blob, &data).unwrap();
        Layer {
            blob,
            digest,
            diff_id: sha(tar),
            size: data.len() as u64,
        }
    }

    /// Compresses the layer tar at `tar` into the file `out`, streaming (for large layers).
    pub fn from_tar_file(tar: &Path, out: &Path) -> std::io::Result<Layer> {
        let mut input = std::fs::File::open(tar)?;
        let compressed = HashingWriter(std::fs::File::create(out)?, Sha256::new(), 0);
        let mut plain = HashingWriter(
            flate2::write::GzEncoder::new(compressed, flate2::Compression::fast()),
            Sha256::new(),
            0,
        );
        std::io::copy(&mut input, &mut plain)?;
        let diff_id = hex::encode(plain.1.finalize());
        let compressed = plain.0.finish()?;
        compressed.0.sync_all()?;
        Ok(Layer {
            blob: out.to_path_buf(),
            digest: hex::encode(compressed.1.finalize()),
            diff_id,
            size: compressed.2,
        })
    }
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W>(W, Sha256, u64);

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        self.2 += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Writes an OCI image layout at `dir` (tag `latest`, ref name `name:latest`) from layers,
/// bottom first, and the image config's `config` section (`Entrypoint`, `Cmd`, `Env`...).
/// Layer blobs outside `dir/blobs/sha256` are hard-linked (copied across file systems).
pub fn write_layout(
    dir: &Path,
    name: &str,
    layers: &[Layer],
    config: serde_json::Value,
) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for l in layers {
        let target = blobs.join(&l.digest);
        if l.blob != target && !target.exists() && std::fs::hard_link(&l.blob, &target).is_err() {
            std::fs::copy(&l.blob, &target).unwrap();
        }
    }
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", l.diff_id))
        .collect();
    // One history entry per layer, as every real builder writes (buildah refuses to build on
    // an image whose history does not account for its layers).
    let history: Vec<serde_json::Value> = (0..layers.len())
        .map(|i| serde_json::json!({"created": "2026-01-01T00:00:00Z", "created_by": format!("skiff-testkit layer {i}")}))
        .collect();
    let config = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config = serde_json::to_vec(&config).unwrap();
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": format!("sha256:{}", l.digest), "size": l.size})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    for b in [&config, &manifest] {
        std::fs::write(blobs.join(sha(b)), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": format!("{name}:latest")}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    dir.to_path_buf()
}

/// `exe` without its debug information (binutils' `strip`): a test binary is mostly that, and
/// an image is quicker to make and import without it.
fn stripped(exe: &Path) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    crate::run(
        std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(tmp.path())
            .arg(exe),
    );
    std::fs::read(tmp.path()).unwrap()
}

/// The shared libraries `ldd` lists for `exe` (resolved, symlinks followed to the file).
fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let out = crate::run(std::process::Command::new("ldd").arg(exe));
    out.lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Converts an OCI layout to a docker archive with the real `skopeo`.
pub fn skopeo_docker_archive(layout: &Path, out: &Path, name: &str) -> PathBuf {
    crate::run(std::process::Command::new("skopeo").args([
        "copy".to_string(),
        format!("oci:{}", layout.display()),
        format!("docker-archive:{}:{name}:latest", out.display()),
    ]));
    out.to_path_buf()
}

/// Converts an OCI layout to an OCI archive with the real `skopeo`.
pub fn skopeo_oci_archive(layout: &Path, out: &Path, name: &str) -> PathBuf {
    crate::run(std::process::Command::new("skopeo").args([
        "copy".to_string(),
        format!("oci:{}", layout.display()),
        format!("oci-archive:{}:{name}:latest", out.display()),
    ]));
    out.to_path_buf()
}
