//! Test helpers shared by the integration tests: raw tar writing (so malicious entries can be
//! crafted), compression, hand-written OCI layouts and docker archives built around Debian's
//! static busybox, external tools (skopeo, umoci) and on-disk snapshots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
pub const CREATED: &str = "2024-01-01T00:00:00Z";

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

pub fn compress(data: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// Writes tar entries with raw names and link targets: nothing is validated, so tests can
/// craft `..`, absolute and symlink-traversing entries.
pub struct TarWriter {
    b: tar::Builder<Vec<u8>>,
}

pub struct Raw<'a> {
    pub kind: tar::EntryType,
    pub name: &'a [u8],
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: &'a [u8],
    pub dev: (u32, u32),
}

impl Default for Raw<'_> {
    fn default() -> Self {
        Raw {
            kind: tar::EntryType::Regular,
            name: b"",
            link: b"",
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            data: b"",
            dev: (0, 0),
        }
    }
}

impl Default for TarWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl TarWriter {
    pub fn new() -> Self {
        TarWriter {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn raw(&mut self, r: Raw<'_>) -> &mut Self {
        assert!(
            r.name.len() < 100 && r.link.len() < 100,
            "keep test names short"
        );
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(r.kind);
        h.set_mode(r.mode);
        h.set_uid(r.uid);
        h.set_gid(r.gid);
        h.set_mtime(r.mtime);
        h.set_size(r.data.len() as u64);
        if matches!(r.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(r.dev.0).unwrap();
            h.set_device_minor(r.dev.1).unwrap();
        }
        {
            let old = h.as_old_mut();
            old.name[..r.name.len()].copy_from_slice(r.name);
            old.linkname[..r.link.len()].copy_from_slice(r.link);
        }
        h.set_cksum();
        self.b.append(&h, r.data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(Raw {
            kind: tar::EntryType::Directory,
            name: name.as_bytes(),
            mode,
            ..Default::default()
        })
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(Raw {
            name: name.as_bytes(),
            mode,
            data,
            ..Default::default()
        })
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(Raw {
            kind: tar::EntryType::Symlink,
            name: name.as_bytes(),
            link: target.as_bytes(),
            mode: 0o777,
            ..Default::default()
        })
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(Raw {
            kind: tar::EntryType::Link,
            name: name.as_bytes(),
            link: target.as_bytes(),
            ..Default::default()
        })
    }

    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(Raw {
            kind: tar::EntryType::Fifo,
            name: name.as_bytes(),
            mode,
            ..Default::default()
        })
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// A layer with Debian's static busybox and a few applet symlinks.
pub fn busybox_layer() -> Vec<u8> {
    let busybox =
        fs::read(BUSYBOX).expect("/bin/busybox is missing: apt-get install busybox-static");
    TarWriter::new()
        .dir("bin/", 0o755)
        .file("bin/busybox", 0o755, &busybox)
        .symlink("bin/sh", "busybox")
        .symlink("bin/ls", "busybox")
        .symlink("bin/echo", "/bin/busybox")
        .dir("etc/", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .finish()
}

/// The container config every test image carries unless it says otherwise.
pub fn default_run_config() -> Value {
    json!({
        "Entrypoint": ["/bin/busybox"],
        "Cmd": ["httpd", "-f", "-p", "8080"],
        "Env": ["PATH=/bin", "GREETING=hello world"],
        "WorkingDir": "/srv",
        "User": "1000:1000",
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}
    })
}

pub struct Image {
    /// Uncompressed tar streams and how each is stored.
    pub layers: Vec<(Vec<u8>, Comp)>,
    /// The `config` object of the image config.
    pub run: Value,
    /// `org.opencontainers.image.ref.name` for index.json.
    pub ref_name: Option<String>,
}

impl Image {
    pub fn busybox(comp: Comp) -> Image {
        Image {
            layers: vec![(busybox_layer(), comp)],
            run: default_run_config(),
            ref_name: Some("busybox:latest".into()),
        }
    }

    pub fn layer(mut self, tar: Vec<u8>, comp: Comp) -> Image {
        self.layers.push((tar, comp));
        self
    }

    pub fn named(mut self, r: Option<&str>) -> Image {
        self.ref_name = r.map(str::to_string);
        self
    }
}

pub fn config_json(diff_ids: &[String], run: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "skiff-image tests"}]
    }))
    .unwrap()
}

pub fn write_blob(layout: &Path, data: &[u8]) -> String {
    let d = sha(data);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(hex_of(&d)), data).unwrap();
    d
}

/// What `write_oci_layout` wrote, so tests can corrupt specific blobs.
pub struct Written {
    pub manifest: String,
    pub config: String,
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// Write `image` as an OCI image layout at `dir`.
pub fn write_oci_layout(dir: &Path, image: &Image) -> Written {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layer_descs = Vec::new();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, comp) in &image.layers {
        diff_ids.push(sha(tar));
        let blob = compress(tar, *comp);
        let d = write_blob(dir, &blob);
        layer_descs.push(json!({"mediaType": comp.media_type(), "digest": d, "size": blob.len()}));
        layers.push(d);
    }
    let config = config_json(&diff_ids, &image.run);
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layer_descs
    }))
    .unwrap();
    let manifest_digest = write_blob(dir, &manifest);
    let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": manifest_digest, "size": manifest.len()});
    if let Some(r) = &image.ref_name {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": r});
    }
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Written {
        manifest: manifest_digest,
        config: config_digest,
        layers,
        diff_ids,
    }
}

/// A tar archive of named in-memory files (for docker archives and plain tars).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = TarWriter::new();
    for (name, data) in files {
        w.file(name, 0o644, data);
    }
    w.finish()
}

/// The path of a required external tool; fails the test (never skips) when it is missing.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; these tests need it: apt-get install skopeo umoci");
}

pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn skopeo_copy(extra: &[&str], from: &str, to: &str) {
    let mut cmd = Command::new(tool("skopeo"));
    cmd.args(["--insecure-policy", "copy", "--quiet"])
        .args(extra)
        .args([from, to]);
    run(&mut cmd);
}

/// A description of everything under `dir` (type, mode, owner, size, link count, content hash,
/// symlink target, opaque xattr) to compare before and after an operation.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    snap(dir, dir, &mut out);
    out
}

fn snap(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let rel = p.strip_prefix(root).unwrap().to_path_buf();
    let opaque = if ft.is_symlink() {
        None
    } else {
        xattr::get(p, "trusted.overlay.opaque").unwrap()
    };
    let mut desc = format!(
        "mode={:o} uid={} gid={} nlink={} opaque={:?}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.nlink(),
        opaque
    );
    if ft.is_file() {
        desc += &format!(" file {}", sha(&fs::read(p).unwrap()));
    } else if ft.is_symlink() {
        desc += &format!(" -> {:?}", fs::read_link(p).unwrap());
    } else if ft.is_char_device() || ft.is_fifo() {
        desc += &format!(" rdev={}", m.rdev());
    }
    out.insert(rel, desc);
    if ft.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            snap(root, &e.unwrap().path(), out);
        }
    }
}

/// Names directly inside `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
