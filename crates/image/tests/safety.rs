//! Crafted malicious layers: `..` paths that climb above the root (also after an absolute
//! name is taken relative to the root), writes through a symlink the layer just made, hard
//! links escaping the layer or going through a symlink, whiteouts through a symlink. Each must be refused with an error naming the entry, leave a sentinel directory
//! outside the store untouched, and leave nothing of the image in the store.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use skiff_image::{ImageError, ImageStore};

/// One malicious layer. `outside` is the absolute sentinel directory; the store lives at
/// `<tmp>/store`, so a layer being unpacked at `<tmp>/store/layers/<tmp dir>` reaches the
/// sentinel through `../../../outside`.
struct Case {
    label: &'static str,
    layer: fn(outside: &str) -> Vec<u8>,
    /// The entry the error must name.
    entry: fn(outside: &str) -> String,
    /// Part of the reason the error must give.
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            label: "dot-dot path",
            layer: |_| {
                TarWriter::new()
                    .file("../../../outside/pwned", 0o644, b"x")
                    .finish()
            },
            entry: |_| "../../../outside/pwned".into(),
            reason: "path escapes the layer",
        },
        Case {
            label: "dot-dot inside a path",
            layer: |_| {
                TarWriter::new()
                    .dir("a/", 0o755)
                    .file("a/../../../../outside/pwned", 0o644, b"x")
                    .finish()
            },
            entry: |_| "a/../../../../outside/pwned".into(),
            reason: "path escapes the layer",
        },
        Case {
            label: "absolute path climbing above the root",
            layer: |_| {
                TarWriter::new()
                    .file("/../../../outside/pwned", 0o644, b"x")
                    .finish()
            },
            entry: |_| "/../../../outside/pwned".into(),
            reason: "path escapes the layer",
        },
        Case {
            label: "write through an absolute symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .file("evil/pwned", 0o644, b"x")
                    .finish()
            },
            entry: |_| "evil/pwned".into(),
            reason: "goes through the symlink \"evil\"",
        },
        Case {
            label: "write through a relative symlink",
            layer: |_| {
                TarWriter::new()
                    .symlink("evil", "../../../outside")
                    .file("evil/pwned", 0o644, b"x")
                    .finish()
            },
            entry: |_| "evil/pwned".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "overwrite an outside file through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .file("evil/target", 0o644, b"overwritten")
                    .finish()
            },
            entry: |_| "evil/target".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "nested symlink then directory",
            layer: |o| {
                TarWriter::new()
                    .dir("a/", 0o755)
                    .symlink("a/b", o)
                    .dir("a/b/sub/", 0o755)
                    .finish()
            },
            entry: |_| "a/b/sub/".into(),
            reason: "goes through the symlink \"a/b\"",
        },
        Case {
            label: "symlink made through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .symlink("evil/ln", "/etc/shadow")
                    .finish()
            },
            entry: |_| "evil/ln".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "fifo made through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .fifo("evil/fifo", 0o644)
                    .finish()
            },
            entry: |_| "evil/fifo".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "hard link escaping with dot-dot",
            layer: |_| {
                TarWriter::new()
                    .hardlink("h", "../../outside/target")
                    .finish()
            },
            entry: |_| "h".into(),
            reason: "hard link target \"../../outside/target\"",
        },
        Case {
            label: "absolute hard link target climbing above the root",
            layer: |_| {
                TarWriter::new()
                    .hardlink("h", "/a/../../outside/target")
                    .finish()
            },
            entry: |_| "h".into(),
            reason: "hard link target \"/a/../../outside/target\": path escapes the layer",
        },
        Case {
            label: "hard link through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .hardlink("h", "evil/target")
                    .file("h", 0o644, b"overwritten")
                    .finish()
            },
            entry: |_| "h".into(),
            reason: "hard link target \"evil/target\": path goes through the symlink \"evil\"",
        },
        Case {
            label: "whiteout through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .file("evil/.wh.target", 0o644, b"")
                    .finish()
            },
            entry: |_| "evil/.wh.target".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "opaque marker through a symlink",
            layer: |o| {
                TarWriter::new()
                    .symlink("evil", o)
                    .file("evil/.wh..wh..opq", 0o644, b"")
                    .finish()
            },
            entry: |_| "evil/.wh..wh..opq".into(),
            reason: "goes through the symlink",
        },
        Case {
            label: "whiteout naming the parent",
            layer: |_| TarWriter::new().file("a/.wh..", 0o644, b"").finish(),
            entry: |_| "a/.wh..".into(),
            reason: "escapes",
        },
    ]
}

#[test]
fn malicious_layers_are_refused_and_write_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("target"), b"original").unwrap();
    let outside_str = outside.to_str().unwrap().to_string();
    let outside_before = snapshot(&outside);

    let root = tmp.path().join("store");
    let s = ImageStore::open(&root).unwrap();
    assert!(s.list().unwrap().is_empty()); // creates the lock file before the snapshot
    let store_before = snapshot(&root);

    for (i, case) in cases().iter().enumerate() {
        // A harmless busybox layer first, so a refused image also has a layer that unpacked
        // fine and must not stay behind. Alternate the malicious layer's compression.
        let comp = [Comp::None, Comp::Gzip, Comp::Zstd][i % 3];
        let image = Image::busybox(Comp::Gzip)
            .layer((case.layer)(&outside_str), comp)
            .named(Some("evil:latest"));
        let layout = tmp.path().join(format!("case-{i}"));
        let written = write_oci_layout(&layout, &image);
        let err = s.import(&layout, None).expect_err(case.label);
        let msg = err.to_string();
        let entry = (case.entry)(&outside_str);
        assert!(
            matches!(err, ImageError::UnsafeEntry { .. }),
            "{}: wrong error kind: {err:?}",
            case.label
        );
        let named = format!("layer {} entry {entry:?}: ", written.layers[1]);
        assert!(
            msg.starts_with(&named),
            "{}: {msg:?} should start with {named:?}",
            case.label
        );
        assert!(
            msg.contains(case.reason),
            "{}: {msg:?} lacks {:?}",
            case.label,
            case.reason
        );
        assert!(msg.ends_with("refusing the image"), "{msg}");

        assert_eq!(
            snapshot(&outside),
            outside_before,
            "{}: wrote outside",
            case.label
        );
        assert_eq!(
            snapshot(&root),
            store_before,
            "{}: store changed",
            case.label
        );
        assert!(matches!(
            s.resolve("evil"),
            Err(ImageError::NotFound { .. })
        ));
        assert!(!tmp.path().join("pwned").exists() && !Path::new("/pwned").exists());
    }
    assert!(s.list().unwrap().is_empty());
}
