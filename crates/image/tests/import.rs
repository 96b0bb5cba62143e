//! Import tests with real images built around Debian's static busybox: hand-written OCI
//! layouts in every layer compression, archives produced by skopeo and umoci, hand-made docker
//! archives in both layouts, whiteouts and metadata on disk, references and garbage collection,
//! and inputs that must be refused without changing the store.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::json;
use skiff_image::{ImageError, ImageStore, ResolvedImage};

fn store(tmp: &Path) -> ImageStore {
    ImageStore::open(&tmp.join("store")).unwrap()
}

/// The layer directory of `resolved` that holds `path`, searching from the top.
fn find_in_layers(resolved: &ResolvedImage, path: &str) -> Option<PathBuf> {
    resolved
        .layers
        .iter()
        .rev()
        .map(|l| l.join(path))
        .find(|p| fs::symlink_metadata(p).is_ok())
}

/// Assert the image runs busybox from its layers and carries the default run config.
fn assert_busybox_image(resolved: &ResolvedImage, run_config: bool) {
    let bb = find_in_layers(resolved, "bin/busybox").expect("bin/busybox in some layer");
    assert_eq!(fs::read(&bb).unwrap(), fs::read(BUSYBOX).unwrap());
    assert_eq!(
        fs::metadata(&bb).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    for l in &resolved.layers {
        assert!(l.is_dir(), "{}", l.display());
    }
    if run_config {
        assert_eq!(resolved.entrypoint, vec!["/bin/busybox"]);
        assert_eq!(resolved.cmd, vec!["httpd", "-f", "-p", "8080"]);
        assert_eq!(resolved.env, vec!["PATH=/bin", "GREETING=hello world"]);
        assert_eq!(resolved.working_dir.as_deref(), Some("/srv"));
        assert_eq!(resolved.user.as_deref(), Some("1000:1000"));
        assert_eq!(resolved.exposed_ports, vec![8080]);
    }
}

#[test]
fn oci_layouts_in_every_layer_compression() {
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let tmp = tempfile::tempdir().unwrap();
        let app = TarWriter::new()
            .dir("srv/", 0o755)
            .file("srv/index.html", 0o644, b"<h1>hi</h1>")
            .finish();
        let image = Image::busybox(comp).layer(app, comp);
        let w = write_oci_layout(&tmp.path().join("layout"), &image);
        let s = store(tmp.path());
        let imported = s.import(&tmp.path().join("layout"), None).unwrap();
        assert_eq!(imported.reference, "busybox:latest", "{comp:?}");
        assert_eq!(imported.digest, w.manifest, "{comp:?}");

        let root = tmp.path().join("store");
        for d in [&w.manifest, &w.config].into_iter().chain(&w.layers) {
            assert!(
                root.join("blobs/sha256").join(hex_of(d)).is_file(),
                "{comp:?} {d}"
            );
        }
        let r = s.resolve("busybox").unwrap();
        assert_eq!(r.digest, w.manifest);
        let want: Vec<PathBuf> = w
            .diff_ids
            .iter()
            .map(|d| root.join("layers").join(hex_of(d)))
            .collect();
        assert_eq!(r.layers, want, "{comp:?}");
        assert_busybox_image(&r, true);
        assert_eq!(
            fs::read_link(r.layers[0].join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            fs::read(r.layers[1].join("srv/index.html")).unwrap(),
            b"<h1>hi</h1>"
        );

        // The unpacked layer really is a root filesystem: busybox runs from it.
        let out = Command::new("chroot")
            .arg(&r.layers[0])
            .args(["/bin/sh", "-c", "echo from-$((40+2))"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "from-42",
            "{out:?}"
        );
    }
}

/// An input produced by a real tool or laid out by hand from a base OCI layout.
struct ArchiveCase {
    label: &'static str,
    /// Builds the input from the base layout directory (tagged `t`) into `work`.
    build: fn(base: &Path, work: &Path) -> PathBuf,
    name: Option<&'static str>,
    want_ref: &'static str,
    /// Whether the image keeps the default run config (umoci rewrites it).
    default_config: bool,
}

fn docker_archive_via_skopeo(base: &Path, work: &Path) -> PathBuf {
    let out = work.join("docker.tar");
    skopeo_copy(
        &[],
        &format!("oci:{}:t", base.display()),
        &format!("docker-archive:{}:foo/bar:v1", out.display()),
    );
    out
}

fn oci_archive_via_skopeo_named(base: &Path, work: &Path) -> PathBuf {
    let out = work.join("oci.tar");
    skopeo_copy(
        &[],
        &format!("oci:{}:t", base.display()),
        &format!(
            "oci-archive:{}:registry.local:5000/team/box:1.0",
            out.display()
        ),
    );
    out
}

fn oci_archive_via_skopeo_unnamed(base: &Path, work: &Path) -> PathBuf {
    let out = work.join("oci-unnamed.tar");
    skopeo_copy(
        &[],
        &format!("oci:{}:t", base.display()),
        &format!("oci-archive:{}", out.display()),
    );
    out
}

fn zstd_layout_via_skopeo(base: &Path, work: &Path) -> PathBuf {
    let out = work.join("zstd-layout");
    skopeo_copy(
        &["--dest-compress-format", "zstd"],
        &format!("oci:{}:t", base.display()),
        &format!("oci:{}:zst", out.display()),
    );
    let index = fs::read_to_string(out.join("index.json")).unwrap();
    let manifest_digest = serde_json::from_str::<serde_json::Value>(&index).unwrap()["manifests"]
        [0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest =
        fs::read_to_string(out.join("blobs/sha256").join(hex_of(&manifest_digest))).unwrap();
    assert!(manifest.contains("tar+zstd"), "{manifest}");
    out
}

fn umoci_layout(_base: &Path, work: &Path) -> PathBuf {
    let umoci = tool("umoci");
    let layout = work.join("umoci");
    let src = work.join("umoci-src/bin");
    fs::create_dir_all(&src).unwrap();
    fs::copy(BUSYBOX, src.join("busybox")).unwrap();
    let image = format!("{}:u", layout.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&src)
        .arg("/bin"));
    run(Command::new(&umoci).args([
        "config",
        "--image",
        &image,
        "--config.entrypoint",
        "/bin/busybox",
        "--config.cmd",
        "sh",
        "--config.env",
        "MODE=umoci",
        "--config.workingdir",
        "/tmp",
        "--config.user",
        "65534",
        "--config.exposedports",
        "9000/tcp",
    ]));
    layout
}

/// Copy the base layout's only layer and config into a docker archive by hand.
fn docker_parts(base: &Path) -> (Vec<u8>, Vec<u8>, String) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(base.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| fs::read(base.join("blobs/sha256").join(hex_of(d))).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(md)).unwrap();
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let config_digest = sha(&config);
    (layer, config, config_digest)
}

fn docker_archive_legacy_by_hand(base: &Path, work: &Path) -> PathBuf {
    let (layer, config, config_digest) = docker_parts(base);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&layer[..])
        .read_to_end(&mut plain)
        .unwrap();
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest = json!([{
        "Config": format!("{}.json", hex_of(&config_digest)),
        "RepoTags": ["legacy:old"],
        "Layers": [format!("{id}/layer.tar")]
    }]);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let config_name = format!("{}.json", hex_of(&config_digest));
    let layer_name = format!("{id}/layer.tar");
    let out = work.join("legacy.tar");
    fs::write(
        &out,
        tar_of(&[
            (layer_name.as_str(), &plain),
            (config_name.as_str(), &config),
            (&format!("{id}/VERSION"), b"1.0"),
            ("manifest.json", &manifest),
            ("repositories", br#"{"legacy":{"old":"x"}}"#),
        ]),
    )
    .unwrap();
    out
}

fn docker_archive_blobs_by_hand(base: &Path, work: &Path) -> PathBuf {
    // The docker 25+ layout: manifest.json points into blobs/sha256/, layers may be gzip.
    let (layer, config, config_digest) = docker_parts(base);
    let layer_digest = sha(&layer);
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{}", hex_of(&config_digest)),
        "RepoTags": ["docker.io/library/newer:v25"],
        "Layers": [format!("blobs/sha256/{}", hex_of(&layer_digest))]
    }]))
    .unwrap();
    let out = work.join("newer.tar");
    fs::write(
        &out,
        tar_of(&[
            ("manifest.json", &manifest),
            (&format!("blobs/sha256/{}", hex_of(&config_digest)), &config),
            (&format!("blobs/sha256/{}", hex_of(&layer_digest)), &layer),
        ]),
    )
    .unwrap();
    out
}

fn gzipped_docker_archive(base: &Path, work: &Path) -> PathBuf {
    let plain = docker_archive_via_skopeo(base, work);
    let out = work.join("docker.tar.gz");
    fs::write(&out, compress(&fs::read(plain).unwrap(), Comp::Gzip)).unwrap();
    out
}

#[test]
fn archives_from_real_tools_and_both_docker_layouts() {
    let cases = [
        ArchiveCase {
            label: "skopeo docker-archive",
            build: docker_archive_via_skopeo,
            name: None,
            want_ref: "foo/bar:v1",
            default_config: true,
        },
        ArchiveCase {
            label: "skopeo oci-archive with its own reference",
            build: oci_archive_via_skopeo_named,
            name: None,
            want_ref: "registry.local:5000/team/box:1.0",
            default_config: true,
        },
        ArchiveCase {
            label: "skopeo oci-archive without reference, named on import",
            build: oci_archive_via_skopeo_unnamed,
            name: Some("app:2"),
            want_ref: "app:2",
            default_config: true,
        },
        ArchiveCase {
            label: "skopeo zstd layout, tag-only reference, named on import",
            build: zstd_layout_via_skopeo,
            name: Some("zbox"),
            want_ref: "zbox:latest",
            default_config: true,
        },
        ArchiveCase {
            label: "umoci layout",
            build: umoci_layout,
            name: Some("umoci/img:1"),
            want_ref: "umoci/img:1",
            default_config: false,
        },
        ArchiveCase {
            label: "legacy docker archive with <id>/layer.tar",
            build: docker_archive_legacy_by_hand,
            name: None,
            want_ref: "legacy:old",
            default_config: true,
        },
        ArchiveCase {
            label: "docker archive pointing into blobs/sha256 (gzip layer)",
            build: docker_archive_blobs_by_hand,
            name: None,
            want_ref: "newer:v25",
            default_config: true,
        },
        ArchiveCase {
            label: "gzip-compressed docker archive, name overrides",
            build: gzipped_docker_archive,
            name: Some("renamed:x"),
            want_ref: "renamed:x",
            default_config: true,
        },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    write_oci_layout(&base, &Image::busybox(Comp::Gzip).named(Some("t")));
    let s = store(tmp.path());
    for case in &cases {
        let work = tmp
            .path()
            .join(case.label.replace([' ', '/', '<', '>', ','], "_"));
        fs::create_dir_all(&work).unwrap();
        let input = (case.build)(&base, &work);
        let imported = s
            .import(&input, case.name)
            .unwrap_or_else(|e| panic!("{}: {e}", case.label));
        assert_eq!(imported.reference, case.want_ref, "{}", case.label);
        let r = s.resolve(case.want_ref).unwrap();
        assert_eq!(r.digest, imported.digest, "{}", case.label);
        assert_busybox_image(&r, case.default_config);
        if !case.default_config {
            assert_eq!(r.entrypoint, vec!["/bin/busybox"], "{}", case.label);
            assert_eq!(r.cmd, vec!["sh"]);
            assert!(r.env.contains(&"MODE=umoci".to_string()), "{:?}", r.env);
            assert_eq!(r.working_dir.as_deref(), Some("/tmp"));
            assert_eq!(r.user.as_deref(), Some("65534"));
            assert_eq!(r.exposed_ports, vec![9000]);
        }
        // Every stored manifest is an OCI (schema 2) image manifest.
        let manifest = fs::read(
            tmp.path()
                .join("store/blobs/sha256")
                .join(hex_of(&imported.digest)),
        )
        .unwrap();
        assert_eq!(sha(&manifest), imported.digest);
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["schemaVersion"], 2, "{}", case.label);
        assert!(m["layers"].as_array().is_some_and(|l| !l.is_empty()));
    }
    // The same busybox layer content is unpacked once and shared by every image using it.
    let listed = s.list().unwrap();
    assert_eq!(listed.len(), cases.len());
    let busybox_diff = sha(&busybox_layer());
    let shared = tmp.path().join("store/layers").join(hex_of(&busybox_diff));
    for info in &listed {
        let r = s.resolve(&info.reference).unwrap();
        if info.reference != "umoci/img:1" {
            assert_eq!(r.layers, vec![shared.clone()], "{}", info.reference);
        }
    }
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    let tmp = tempfile::tempdir().unwrap();
    let lower = TarWriter::new()
        .dir("etc/", 0o755)
        .file("etc/a", 0o644, b"a")
        .file("etc/b", 0o644, b"b")
        .dir("opt/", 0o755)
        .file("opt/x", 0o644, b"x")
        .finish();
    let upper = TarWriter::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.a", 0o644, b"")
        .file("opt/.wh..wh..opq", 0o644, b"")
        .file("opt/y", 0o644, b"y")
        .file("gone/.wh.deep", 0o644, b"")
        .file(".wh.toplevel", 0o644, b"")
        .file("etc/.wh..wh.plnk", 0o644, b"")
        .finish();
    let image = Image {
        layers: vec![(lower, Comp::Gzip), (upper, Comp::Zstd)],
        run: default_run_config(),
        ref_name: Some("wh:1".into()),
    };
    write_oci_layout(&tmp.path().join("layout"), &image);
    let s = store(tmp.path());
    s.import(&tmp.path().join("layout"), None).unwrap();
    let r = s.resolve("wh:1").unwrap();
    let top = &r.layers[1];

    let is_whiteout = |p: &Path| {
        let m = fs::symlink_metadata(p).unwrap();
        m.file_type().is_char_device() && m.rdev() == 0
    };
    assert!(is_whiteout(&top.join("etc/a")));
    assert!(is_whiteout(&top.join("gone/deep")));
    assert!(is_whiteout(&top.join("toplevel")));
    assert_eq!(
        xattr::get(top.join("opt"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(top.join("etc"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(fs::read(top.join("opt/y")).unwrap(), b"y");
    assert_eq!(names(&top.join("etc")), vec!["a"]);
    assert_eq!(names(&top.join("opt")), vec!["y"]);
    // The lower layer is untouched.
    assert_eq!(names(&r.layers[0].join("etc")), vec!["a", "b"]);

    // umoci writes OCI whiteouts too.
    let umoci = tool("umoci");
    let layout = tmp.path().join("umoci");
    let img = format!("{}:w", layout.display());
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/keep"), b"k").unwrap();
    fs::write(src.join("etc/drop"), b"d").unwrap();
    fs::create_dir_all(tmp.path().join("newopt")).unwrap();
    fs::write(tmp.path().join("newopt/only"), b"o").unwrap();
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
    run(Command::new(&umoci).args(["new", "--image", &img]));
    run(Command::new(&umoci)
        .args(["insert", "--image", &img])
        .arg(src.join("etc"))
        .arg("/etc"));
    run(Command::new(&umoci).args(["insert", "--image", &img, "--whiteout", "/etc/drop"]));
    run(Command::new(&umoci)
        .args(["insert", "--image", &img, "--opaque"])
        .arg(tmp.path().join("newopt"))
        .arg("/etc"));
    s.import(&layout, Some("umoci-wh")).unwrap();
    let r = s.resolve("umoci-wh").unwrap();
    assert_eq!(r.layers.len(), 3);
    assert!(is_whiteout(&r.layers[1].join("etc/drop")));
    assert_eq!(
        xattr::get(r.layers[2].join("etc"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(r.layers[2].join("etc/only")).unwrap(), b"o");
}

#[test]
fn metadata_links_and_special_files_are_preserved() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = TarWriter::new()
        .raw(Raw {
            kind: tar::EntryType::Directory,
            name: b"secret/",
            mode: 0o700,
            uid: 42,
            gid: 43,
            mtime: 1_100_000_000,
            ..Default::default()
        })
        .raw(Raw {
            name: b"secret/setuid",
            mode: 0o4755,
            uid: 1234,
            gid: 5678,
            mtime: 1_000_000_000,
            data: b"#!/bin/sh\n",
            ..Default::default()
        })
        .raw(Raw {
            kind: tar::EntryType::Symlink,
            name: b"link",
            link: b"/etc/passwd",
            mode: 0o777,
            uid: 7,
            gid: 8,
            mtime: 1_200_000_000,
            ..Default::default()
        })
        .hardlink("hard", "secret/setuid")
        .fifo("pipe", 0o640)
        .raw(Raw {
            kind: tar::EntryType::Char,
            name: b"dev/null",
            mode: 0o666,
            dev: (1, 3),
            ..Default::default()
        })
        .file("implied/deep/file", 0o600, b"deep")
        .finish();
    let image = Image {
        layers: vec![(layer, Comp::Gzip)],
        run: json!({}),
        ref_name: Some("meta:1".into()),
    };
    write_oci_layout(&tmp.path().join("layout"), &image);
    let s = store(tmp.path());
    s.import(&tmp.path().join("layout"), None).unwrap();
    let r = s.resolve("meta:1").unwrap();
    let l = &r.layers[0];
    assert!(r.entrypoint.is_empty() && r.cmd.is_empty() && r.env.is_empty());
    assert_eq!((r.working_dir.clone(), r.user.clone()), (None, None));

    let m = |p: &str| fs::symlink_metadata(l.join(p)).unwrap();
    let secret = m("secret");
    assert_eq!(
        (
            secret.mode() & 0o7777,
            secret.uid(),
            secret.gid(),
            secret.mtime()
        ),
        (0o700, 42, 43, 1_100_000_000)
    );
    let suid = m("secret/setuid");
    assert_eq!(
        (suid.mode() & 0o7777, suid.uid(), suid.gid(), suid.mtime()),
        (0o4755, 1234, 5678, 1_000_000_000)
    );
    let link = m("link");
    assert!(link.file_type().is_symlink());
    assert_eq!(
        fs::read_link(l.join("link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        (link.uid(), link.gid(), link.mtime()),
        (7, 8, 1_200_000_000)
    );
    let hard = m("hard");
    assert_eq!(hard.ino(), suid.ino());
    assert_eq!(hard.nlink(), 2);
    let pipe = m("pipe");
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    let null = m("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    for implied in ["implied", "implied/deep", "dev"] {
        assert_eq!(m(implied).mode() & 0o7777, 0o755, "{implied}");
    }
    assert_eq!(m("implied/deep/file").mode() & 0o7777, 0o600);
    assert_eq!(m("").mode() & 0o7777, 0o755, "layer root");
}

#[test]
fn references_reimport_and_garbage_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let s = store(tmp.path());
    let a_dir = tmp.path().join("a");
    let a = write_oci_layout(&a_dir, &Image::busybox(Comp::Gzip).named(Some("app:1")));
    let b_dir = tmp.path().join("b");
    let extra = TarWriter::new().file("srv/v2", 0o644, b"two").finish();
    let b = write_oci_layout(
        &b_dir,
        &Image::busybox(Comp::Gzip)
            .layer(extra, Comp::Zstd)
            .named(Some("app:1")),
    );

    // Idempotent re-import.
    let first = s.import(&a_dir, None).unwrap();
    let before = snapshot(&root);
    let again = s.import(&a_dir, None).unwrap();
    assert_eq!(first, again);
    assert_eq!(snapshot(&root), before, "re-import changed the store");
    assert_eq!(s.list().unwrap().len(), 1);

    // A second name for the same image, then app:1 moves to image b.
    assert_eq!(
        s.import(&a_dir, Some("app:stable")).unwrap().digest,
        a.manifest
    );
    let moved = s.import(&b_dir, None).unwrap();
    assert_eq!(
        (moved.reference.as_str(), moved.digest.as_str()),
        ("app:1", b.manifest.as_str())
    );
    let list = s.list().unwrap();
    let got: Vec<(&str, &str)> = list
        .iter()
        .map(|i| (i.reference.as_str(), i.digest.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("app:1", b.manifest.as_str()),
            ("app:stable", a.manifest.as_str())
        ]
    );
    for info in &list {
        assert_eq!(info.created.as_deref(), Some(CREATED));
        assert!(
            info.size > fs::metadata(BUSYBOX).unwrap().len() / 4,
            "{info:?}"
        );
    }
    let refs: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("refs.json")).unwrap()).unwrap();
    assert_eq!(refs["refs"]["app:1"], b.manifest.as_str());

    // Resolve by name@digest and bare digest.
    assert_eq!(
        s.resolve(&format!("app@{}", a.manifest)).unwrap().digest,
        a.manifest
    );
    assert_eq!(s.resolve(&b.manifest).unwrap().layers.len(), 2);

    // Delete app:1 while a revision pins b: b's blobs and layers stay.
    s.delete("app:1", std::slice::from_ref(&b.manifest))
        .unwrap();
    assert!(matches!(
        s.resolve("app:1"),
        Err(ImageError::NotFound { .. })
    ));
    assert_eq!(s.resolve(&b.manifest).unwrap().layers.len(), 2);
    assert_eq!(s.resolve("app:stable").unwrap().digest, a.manifest);

    // Unpinned: b's own blobs and layer go, the shared busybox layer stays for a.
    s.gc(&[]).unwrap();
    assert!(matches!(
        s.resolve(&b.manifest),
        Err(ImageError::NotFound { .. })
    ));
    assert!(!root.join("layers").join(hex_of(&b.diff_ids[1])).exists());
    assert!(!root
        .join("blobs/sha256")
        .join(hex_of(&b.layers[1]))
        .exists());
    assert!(root.join("layers").join(hex_of(&a.diff_ids[0])).is_dir());
    assert_busybox_image(&s.resolve("app:stable").unwrap(), true);

    // Delete by name@digest removes the last reference; everything is collected.
    s.delete(&format!("app@{}", a.manifest), &[]).unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(names(&root.join("blobs/sha256")).is_empty());
    assert!(names(&root.join("layers")).is_empty());

    // Errors say what is wrong.
    let cases: Vec<(Result<(), ImageError>, &str)> = vec![
        (s.delete("app:1", &[]), "no image \"app:1\""),
        (s.delete("app:1", &["nope".into()]), "sha256"),
        (s.resolve("ghost").map(|_| ()), "no image \"ghost\""),
        (
            s.resolve(&format!("sha256:{}", "0".repeat(64))).map(|_| ()),
            "no image",
        ),
        (s.resolve("Bad Name").map(|_| ()), "invalid image reference"),
        (
            s.import(&a_dir, Some(&format!("app@{}", a.manifest)))
                .map(|_| ()),
            "cannot be imported under a digest",
        ),
    ];
    for (res, needle) in cases {
        let e = res.expect_err(needle).to_string();
        assert!(e.contains(needle), "{e}");
    }
}

/// An input that must be refused without changing the store.
struct BadCase {
    label: &'static str,
    build: fn(work: &Path) -> PathBuf,
    name: Option<&'static str>,
    needles: &'static [&'static str],
}

fn layout_with(work: &Path, image: &Image) -> (PathBuf, Written) {
    let dir = work.join("layout");
    let w = write_oci_layout(&dir, image);
    (dir, w)
}

fn blob_file(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256").join(hex_of(digest))
}

fn flip_last_byte(p: &Path) {
    let mut b = fs::read(p).unwrap();
    *b.last_mut().unwrap() ^= 0xff;
    fs::write(p, b).unwrap();
}

fn small_image() -> Image {
    Image {
        layers: vec![(
            TarWriter::new().file("hello", 0o644, b"hello").finish(),
            Comp::Gzip,
        )],
        run: default_run_config(),
        ref_name: Some("small:1".into()),
    }
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let cases = [
        BadCase {
            label: "random bytes",
            build: |w| {
                let p = w.join("random.bin");
                let mut x: u64 = 0x9e3779b97f4a7c15;
                let bytes: Vec<u8> = (0..100_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                fs::write(&p, bytes).unwrap();
                p
            },
            name: Some("x"),
            needles: &["not an image archive", "not a tar archive"],
        },
        BadCase {
            label: "short random bytes",
            build: |w| {
                let p = w.join("short.bin");
                fs::write(&p, b"\x01\x02definitely not an image").unwrap();
                p
            },
            name: Some("x"),
            needles: &["not an image archive"],
        },
        BadCase {
            label: "empty file",
            build: |w| {
                let p = w.join("empty");
                fs::write(&p, b"").unwrap();
                p
            },
            name: None,
            needles: &["neither index.json", "manifest.json"],
        },
        BadCase {
            label: "plain tar",
            build: |w| {
                let p = w.join("plain.tar");
                fs::write(&p, tar_of(&[("hello.txt", b"hi"), ("etc/x", b"y")])).unwrap();
                p
            },
            name: Some("x"),
            needles: &["neither index.json (OCI layout) nor manifest.json"],
        },
        BadCase {
            label: "directory that is not a layout",
            build: |w| {
                let p = w.join("notalayout");
                fs::create_dir_all(&p).unwrap();
                fs::write(p.join("README"), b"hi").unwrap();
                p
            },
            name: Some("x"),
            needles: &["neither index.json"],
        },
        BadCase {
            label: "xz compressed file",
            build: |w| {
                let p = w.join("x.tar.xz");
                fs::write(&p, b"\xfd7zXZ\x00rest").unwrap();
                p
            },
            name: Some("x"),
            needles: &["xz compression is not supported"],
        },
        BadCase {
            label: "missing layer blob",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                fs::remove_file(blob_file(&dir, &written.layers[0])).unwrap();
                dir
            },
            name: None,
            needles: &["is missing from the archive", "layer"],
        },
        BadCase {
            label: "missing config blob",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                fs::remove_file(blob_file(&dir, &written.config)).unwrap();
                dir
            },
            name: None,
            needles: &["config", "is missing from the archive"],
        },
        BadCase {
            label: "docker archive missing its layer",
            build: |w| {
                let config = config_json(&[sha(b"x")], &default_run_config());
                let manifest = serde_json::to_vec(&json!([{
                    "Config": "c.json", "RepoTags": ["d:1"], "Layers": ["nope/layer.tar"]
                }]))
                .unwrap();
                let p = w.join("docker-missing.tar");
                fs::write(
                    &p,
                    tar_of(&[("manifest.json", &manifest), ("c.json", &config)]),
                )
                .unwrap();
                p
            },
            name: None,
            needles: &["nope/layer.tar", "missing"],
        },
        BadCase {
            label: "layer digest mismatch",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                flip_last_byte(&blob_file(&dir, &written.layers[0]));
                dir
            },
            name: None,
            needles: &["layer", "has content with digest"],
        },
        BadCase {
            label: "config digest mismatch",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                let p = blob_file(&dir, &written.config);
                let mut b = fs::read(&p).unwrap();
                let n = b.len();
                b[n - 2] = b' ';
                fs::write(p, b).unwrap();
                dir
            },
            name: None,
            needles: &["(config) has content with digest"],
        },
        BadCase {
            label: "manifest digest mismatch",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                let p = blob_file(&dir, &written.manifest);
                let mut b = fs::read(&p).unwrap();
                let n = b.len();
                b[n - 2] = b' ';
                fs::write(p, b).unwrap();
                dir
            },
            name: None,
            needles: &["(manifest) has content with digest"],
        },
        BadCase {
            label: "diff_id mismatch",
            build: |w| {
                let (dir, written) = layout_with(w, &small_image());
                // Rewrite config and manifest so that only the diff_id is wrong.
                let config = config_json(&[sha(b"something else")], &default_run_config());
                let cd = write_blob(&dir, &config);
                let mb = fs::read(blob_file(&dir, &written.manifest)).unwrap();
                let mut m: serde_json::Value = serde_json::from_slice(&mb).unwrap();
                m["config"] = json!({"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": cd, "size": config.len()});
                let mb = serde_json::to_vec(&m).unwrap();
                let md = write_blob(&dir, &mb);
                let index = json!({"schemaVersion": 2, "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": md, "size": mb.len(),
                    "annotations": {"org.opencontainers.image.ref.name": "small:1"}}]});
                fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
                dir
            },
            name: None,
            needles: &["diff_id", "the image config says"],
        },
        BadCase {
            label: "layer that is not a tar",
            build: |w| {
                let mut image = small_image();
                image.layers[0] = (vec![0x55; 2048], Comp::Gzip);
                layout_with(w, &image).0
            },
            name: None,
            needles: &["layer sha256:", "tar"],
        },
        BadCase {
            label: "no name anywhere",
            build: |w| layout_with(w, &small_image().named(None)).0,
            name: None,
            needles: &["does not name its image", "--name"],
        },
        BadCase {
            label: "tag-only reference",
            build: |w| layout_with(w, &small_image().named(Some("latest"))).0,
            name: None,
            needles: &["only carries the tag \"latest\"", "--name"],
        },
        BadCase {
            label: "two images, no name",
            build: |w| {
                let one = layout_with(w, &small_image()).0;
                let other = w.join("other");
                write_oci_layout(&other, &Image::busybox(Comp::None).named(Some("big:2")));
                let idx = |d: &Path| -> serde_json::Value {
                    serde_json::from_slice(&fs::read(d.join("index.json")).unwrap()).unwrap()
                };
                let mut merged = idx(&one);
                let extra = idx(&other)["manifests"][0].clone();
                merged["manifests"].as_array_mut().unwrap().push(extra);
                for e in fs::read_dir(other.join("blobs/sha256")).unwrap() {
                    let e = e.unwrap();
                    fs::copy(e.path(), one.join("blobs/sha256").join(e.file_name())).unwrap();
                }
                fs::write(one.join("index.json"), serde_json::to_vec(&merged).unwrap()).unwrap();
                one
            },
            name: Some("neither:1"),
            needles: &["several images", "small:1", "big:2", "--name"],
        },
    ];
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let root = tmp.path().join("store");
    let good = tmp.path().join("good");
    write_oci_layout(&good, &Image::busybox(Comp::Gzip));
    s.import(&good, None).unwrap();
    let before = snapshot(&root);
    for (i, case) in cases.iter().enumerate() {
        let work = tmp.path().join(format!("case-{i}"));
        fs::create_dir_all(&work).unwrap();
        let input = (case.build)(&work);
        let err = s
            .import(&input, case.name)
            .expect_err(case.label)
            .to_string();
        for needle in case.needles {
            assert!(
                err.contains(needle),
                "{}: {err:?} lacks {needle:?}",
                case.label
            );
        }
        assert!(!err.ends_with('.'), "{err}");
        assert_eq!(snapshot(&root), before, "{}: the store changed", case.label);
    }
    assert_busybox_image(&s.resolve("busybox").unwrap(), true);
}

#[test]
fn concurrent_imports_share_one_copy_of_each_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let s = store(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write_oci_layout(&a, &Image::busybox(Comp::Gzip).named(Some("c:1")));
    let extra = TarWriter::new().file("srv/b", 0o644, b"b").finish();
    write_oci_layout(
        &b,
        &Image::busybox(Comp::Gzip)
            .layer(extra.clone(), Comp::Gzip)
            .named(Some("c:2")),
    );
    std::thread::scope(|scope| {
        for i in 0..4 {
            let (s, dir) = (&s, if i % 2 == 0 { &a } else { &b });
            scope.spawn(move || s.import(dir, None).unwrap());
        }
    });
    let mut want = vec![
        hex_of(&sha(&busybox_layer())).to_string(),
        hex_of(&sha(&extra)).to_string(),
    ];
    want.sort();
    assert_eq!(names(&root.join("layers")), want);
    assert_eq!(s.list().unwrap().len(), 2);
    assert_busybox_image(&s.resolve("c:1").unwrap(), true);
    assert_eq!(s.resolve("c:2").unwrap().layers.len(), 2);
}

/// Absolute and `./`-prefixed names, and names with `.` and `..` inside the root, apply under
/// the layer's root after cleaning (containerd's rule), hard-link targets too.
#[test]
fn absolute_and_dot_prefixed_names_apply_under_the_layer_root() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = TarWriter::new()
        .dir("/", 0o755)
        .dir("/abs/", 0o750)
        .file("/abs/file", 0o644, b"absolute")
        .file("./dot/file", 0o600, b"dotted")
        .file("/a/./b/../c", 0o644, b"cleaned")
        .file("x/../top", 0o644, b"top")
        .hardlink("/abs/hard", "/abs/file")
        .hardlink("./dot/hard", "./dot/../dot/file")
        .finish();
    let image = Image {
        layers: vec![(layer, Comp::Gzip)],
        run: json!({}),
        ref_name: Some("abs:1".into()),
    };
    write_oci_layout(&tmp.path().join("layout"), &image);
    let s = store(tmp.path());
    s.import(&tmp.path().join("layout"), None).unwrap();
    let l = &s.resolve("abs:1").unwrap().layers[0];
    assert_eq!(fs::read(l.join("abs/file")).unwrap(), b"absolute");
    assert_eq!(fs::read(l.join("dot/file")).unwrap(), b"dotted");
    assert_eq!(fs::read(l.join("a/c")).unwrap(), b"cleaned");
    assert!(!l.join("a/b").exists());
    assert_eq!(fs::read(l.join("top")).unwrap(), b"top");
    assert!(!l.join("x").exists());
    let ino = |p: &str| fs::metadata(l.join(p)).unwrap().ino();
    assert_eq!(ino("abs/hard"), ino("abs/file"));
    assert_eq!(ino("dot/hard"), ino("dot/file"));
    assert_eq!(
        fs::metadata(l.join("abs")).unwrap().permissions().mode() & 0o7777,
        0o750
    );
}

/// `umoci insert SRC /` writes a layer whose first entry is `/`: the image imports and runs
/// its files from the layer's root.
#[test]
fn umoci_insert_at_the_root_imports() {
    let umoci = tool("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("umoci");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::copy(BUSYBOX, src.join("bin/busybox")).unwrap();
    let image = format!("{}:root", layout.display());
    run(Command::new(&umoci).args(["init", "--layout"]).arg(&layout));
    run(Command::new(&umoci).args(["new", "--image", &image]));
    run(Command::new(&umoci)
        .args(["insert", "--image", &image])
        .arg(&src)
        .arg("/"));
    // The layer really starts with "/", the case that used to be refused.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(hex_of(manifest_digest))).unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = fs::File::open(layout.join("blobs/sha256").join(hex_of(layer_digest))).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob));
    let first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(&*first.path_bytes(), b"/");

    let s = store(tmp.path());
    s.import(&layout, Some("rooted:1")).unwrap();
    let r = s.resolve("rooted:1").unwrap();
    assert_busybox_image(&r, false);
}

#[test]
fn indexes_and_artifacts_are_stored_verbatim_resolved_by_platform_and_kept_by_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let s = store(tmp.path());
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let native_dir = tmp.path().join("native");
    let native = write_oci_layout(&native_dir, &small_image().named(Some("multi:native")));
    let foreign_dir = tmp.path().join("foreign");
    let extra = TarWriter::new().file("srv/foreign", 0o644, b"f").finish();
    let foreign = write_oci_layout(
        &foreign_dir,
        &small_image()
            .layer(extra, Comp::Gzip)
            .named(Some("multi:foreign")),
    );
    s.import(&native_dir, Some("multi:n")).unwrap();
    s.import(&foreign_dir, Some("multi:f")).unwrap();
    let size = |dir: &Path, d: &str| fs::metadata(blob_file(dir, d)).unwrap().len();
    let index = serde_json::to_vec(&json!({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": foreign.manifest,
         "size": size(&foreign_dir, &foreign.manifest),
         "platform": {"os": "linux", "architecture": other}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": native.manifest,
         "size": size(&native_dir, &native.manifest),
         "platform": {"os": "linux", "architecture": host}},
    ]}))
    .unwrap();
    let stored = s
        .put_content("multi:v1", &index, &[], skiff_image::ImageSource::Pushed)
        .unwrap();
    assert_eq!(stored.digest, sha(&index));
    assert_eq!(
        fs::read(root.join("blobs/sha256").join(hex_of(&stored.digest))).unwrap(),
        index
    );
    // The index resolves to this machine's image.
    assert_eq!(s.resolve("multi:v1").unwrap().digest, native.manifest);

    // An index whose only entry is for another platform is refused as containerd refuses it,
    // with the message the two-entry case gives; the only entry without a platform is taken.
    let one = |platform: Option<serde_json::Value>| {
        let mut entry = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": foreign.manifest, "size": size(&foreign_dir, &foreign.manifest)});
        if let Some(p) = platform {
            entry["platform"] = p;
        }
        serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [entry]}))
        .unwrap()
    };
    s.put_content(
        "single:foreign",
        &one(Some(json!({"os": "linux", "architecture": other}))),
        &[],
        skiff_image::ImageSource::Pushed,
    )
    .unwrap();
    let e = s.resolve("single:foreign").unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "the index has no linux/{host} image (it offers: linux/{other}); export the image for linux/{host}"
        )),
        "{e}"
    );
    s.put_content(
        "single:bare",
        &one(None),
        &[],
        skiff_image::ImageSource::Pushed,
    )
    .unwrap();
    assert_eq!(s.resolve("single:bare").unwrap().digest, foreign.manifest);
    s.delete("single:foreign", &[]).unwrap();
    s.delete("single:bare", &[]).unwrap();
    let (kind, bytes) = s.manifest("multi:v1").unwrap();
    assert_eq!(
        (kind, bytes),
        (skiff_image::ManifestKind::Index, index.clone())
    );

    // An artifact: its layer comes from a file given with it, its empty config is known.
    let sbom_file = tmp.path().join("sbom");
    fs::write(&sbom_file, b"sbom").unwrap();
    let sbom = sha(b"sbom");
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                   "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sbom", "digest": sbom, "size": 4}],
        "subject": {"mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": stored.digest, "size": index.len()}}))
    .unwrap();
    let a = s
        .put_content(
            &format!("multi@{}", sha(&artifact)),
            &artifact,
            &[(sbom.clone(), sbom_file.clone())],
            skiff_image::ImageSource::Pushed,
        )
        .unwrap();
    let e = s.resolve(&a.reference).unwrap_err().to_string();
    assert!(
        e.contains("not a runnable container image") && e.contains("application/vnd.example.sbom"),
        "{e}"
    );
    let listed = s.list().unwrap();
    assert!(listed
        .iter()
        .any(|i| i.reference == "multi:v1" && i.size > index.len() as u64));

    // Garbage collection keeps what the index reaches after the per-platform tags go.
    s.delete("multi:n", &[]).unwrap();
    s.delete("multi:f", &[]).unwrap();
    s.gc(&[]).unwrap();
    for d in [
        &foreign.manifest,
        &foreign.config,
        &foreign.layers[1],
        &sbom,
    ] {
        assert!(root.join("blobs/sha256").join(hex_of(d)).is_file(), "{d}");
    }
    assert!(root
        .join("layers")
        .join(hex_of(&foreign.diff_ids[1]))
        .is_dir());
    assert_eq!(s.resolve("multi:v1").unwrap().digest, native.manifest);
    // A blob in use cannot be deleted; once nothing reaches it, it can.
    let e = s.delete_blob(&sbom, &[]).unwrap_err().to_string();
    assert!(e.contains("in use by multi@"), "{e}");
    s.delete(&a.reference, &[]).unwrap();
    assert!(
        !s.delete_blob(&sbom, &[]).unwrap(),
        "collected with its manifest"
    );

    // Refused: an index naming a manifest the store lacks, an artifact without its blob, a
    // pinned digest the bytes do not have, schema 1.
    let missing = format!("sha256:{}", "5".repeat(64));
    let pinned_elsewhere = format!("multi@{missing}");
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 1}]}))
            .unwrap(),
            "multi:bad",
            "is not in the image store",
        ),
        (
            serde_json::to_vec(&json!({"schemaVersion": 2, "artifactType": "x/y",
                "config": {"mediaType": "x/y", "digest": missing, "size": 1}}))
            .unwrap(),
            "multi:bad",
            "is not in the image store",
        ),
        (index.clone(), &pinned_elsewhere, "digest"),
        (br#"{"schemaVersion":1}"#.to_vec(), "multi:bad", "schema 1"),
    ];
    let before = snapshot(&root);
    for (bytes, reference, needle) in cases {
        let e = s
            .put_content(reference, &bytes, &[], skiff_image::ImageSource::Pushed)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert_eq!(snapshot(&root), before);
}

#[test]
fn a_manifest_stored_as_pushed_unpacks_on_resolve_or_says_why_it_cannot() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let s = store(tmp.path());
    // An image stored verbatim (what a push keeps when its import fails): its layers unpack
    // when it is first resolved.
    let good_dir = tmp.path().join("good");
    let good = write_oci_layout(&good_dir, &small_image());
    let handed = |dir: &Path, w: &Written| -> Vec<(String, PathBuf)> {
        std::iter::once(&w.config)
            .chain(&w.layers)
            .map(|d| (d.clone(), blob_file(dir, d)))
            .collect()
    };
    let bytes = fs::read(blob_file(&good_dir, &good.manifest)).unwrap();
    s.put_content(
        "kept:good",
        &bytes,
        &handed(&good_dir, &good),
        skiff_image::ImageSource::Pushed,
    )
    .unwrap();
    assert!(!root.join("layers").join(hex_of(&good.diff_ids[0])).exists());
    let resolved = s.resolve("kept:good").unwrap();
    assert_eq!(resolved.digest, good.manifest);
    assert_eq!(
        fs::read(resolved.layers[0].join("hello")).unwrap(),
        b"hello"
    );

    // One whose layer climbs out of its root: resolving names the entry and stores nothing.
    let evil = TarWriter::new()
        .raw(Raw {
            name: b"../../escaped",
            data: b"x",
            ..Default::default()
        })
        .finish();
    let bad_dir = tmp.path().join("bad");
    let bad = write_oci_layout(
        &bad_dir,
        &Image {
            layers: vec![(evil, Comp::Gzip)],
            run: default_run_config(),
            ref_name: None,
        },
    );
    let bytes = fs::read(blob_file(&bad_dir, &bad.manifest)).unwrap();
    s.put_content(
        "kept:bad",
        &bytes,
        &handed(&bad_dir, &bad),
        skiff_image::ImageSource::Pushed,
    )
    .unwrap();
    let layers_before = names(&root.join("layers"));
    let e = s.resolve("kept:bad").unwrap_err();
    assert!(matches!(e, ImageError::NotRunnable { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("kept:bad is not a runnable container image") && e.contains("../../escaped"),
        "{e}"
    );
    assert_eq!(names(&root.join("layers")), layers_before);
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn an_indexs_entries_pushed_by_digest_live_as_long_as_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let native_dir = tmp.path().join("native");
    let native = write_oci_layout(&native_dir, &small_image().named(Some("kids:native")));
    let foreign_dir = tmp.path().join("foreign");
    let extra = TarWriter::new().file("srv/foreign", 0o644, b"f").finish();
    let foreign = write_oci_layout(
        &foreign_dir,
        &small_image()
            .layer(extra, Comp::Gzip)
            .named(Some("kids:foreign")),
    );
    s.import(&native_dir, Some("base:n")).unwrap();
    s.import(&foreign_dir, Some("base:f")).unwrap();
    let bytes = |dir: &Path, d: &str| fs::read(blob_file(dir, d)).unwrap();
    let pushed = skiff_image::ImageSource::Pushed;
    // As `skopeo copy --all` pushes: each entry by digest, then the index by tag.
    for (dir, d) in [
        (&native_dir, &native.manifest),
        (&foreign_dir, &foreign.manifest),
    ] {
        s.put_content(&format!("kids@{d}"), &bytes(dir, d), &[], pushed)
            .unwrap();
    }
    // A manifest pushed by digest on purpose, which no index lists.
    s.put_content(
        &format!("loner@{}", foreign.manifest),
        &bytes(&foreign_dir, &foreign.manifest),
        &[],
        pushed,
    )
    .unwrap();
    let index = serde_json::to_vec(&json!({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": native.manifest,
         "size": bytes(&native_dir, &native.manifest).len(),
         "platform": {"os": "linux", "architecture": "s390x"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": foreign.manifest,
         "size": bytes(&foreign_dir, &foreign.manifest).len(),
         "platform": {"os": "linux", "architecture": "riscv64"}},
    ]}))
    .unwrap();
    s.put_content("kids:v1", &index, &[], pushed).unwrap();
    s.delete("base:n", &[]).unwrap();
    s.delete("base:f", &[]).unwrap();
    let refs = |s: &ImageStore| -> Vec<String> {
        s.list().unwrap().into_iter().map(|i| i.reference).collect()
    };

    // While the index is kept, prune keeps its entries and their references.
    s.gc(&[]).unwrap();
    let listed = refs(&s);
    for want in [
        format!("kids@{}", native.manifest),
        format!("kids@{}", foreign.manifest),
        format!("loner@{}", foreign.manifest),
        "kids:v1".to_string(),
    ] {
        assert!(listed.contains(&want), "{want} in {listed:?}");
    }

    // Past its index, an entry stays while a pin (a revision's) or another reference
    // reaches its digest; the native one goes with its pin, the foreign one stays while the
    // manifest pushed on purpose to another repository names the same digest.
    s.delete("kids:v1", std::slice::from_ref(&native.manifest))
        .unwrap();
    let kept = vec![
        format!("kids@{}", foreign.manifest),
        format!("loner@{}", foreign.manifest),
    ];
    let mut with_pin = vec![format!("kids@{}", native.manifest)];
    with_pin.extend(kept.iter().cloned());
    with_pin.sort();
    assert_eq!(refs(&s), with_pin);
    s.gc(&[]).unwrap();
    assert_eq!(refs(&s), kept);
    assert!(!blob_file(&tmp.path().join("store"), &native.manifest).exists());
    assert!(blob_file(&tmp.path().join("store"), &foreign.manifest).exists());
}
