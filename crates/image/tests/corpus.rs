//! The corpus of odd but valid layers real tools write (`tests/corpus/*.tar`, made by
//! `tests/corpus/make.py` with Python's tarfile and GNU tar): each is imported as an image's
//! only layer, in turn uncompressed, gzip and zstd, and what lands on disk is checked.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;
use skiff_image::ImageStore;

fn corpus(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Imports the corpus file as a one-layer image; returns the unpacked layer's directory.
fn unpack(store: &ImageStore, tmp: &Path, name: &str, comp: Comp) -> PathBuf {
    let image = Image {
        layers: vec![(corpus(name), comp)],
        run: json!({}),
        ref_name: Some(format!("corpus:{}", name.trim_end_matches(".tar"))),
    };
    let layout = tmp.join(name);
    write_oci_layout(&layout, &image);
    store
        .import(&layout, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = store
        .resolve(&format!("corpus:{}", name.trim_end_matches(".tar")))
        .unwrap();
    r.layers[0].clone()
}

type Check = fn(&Path);

const LONG_DIR: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn long_names(l: &Path) {
    let file = format!("{LONG_DIR}/{}.txt", "c".repeat(80));
    assert_eq!(fs::read(l.join(&file)).unwrap(), b"long\n");
    assert_eq!(
        fs::read_link(l.join("short-link")).unwrap(),
        Path::new(&format!("/{}", "t".repeat(150)))
    );
    let hard = fs::metadata(l.join(format!("{LONG_DIR}/hard"))).unwrap();
    assert_eq!(hard.ino(), fs::metadata(l.join(&file)).unwrap().ino());
}

fn cases() -> Vec<(&'static str, Check)> {
    vec![
        ("pax-long-names.tar", long_names),
        ("gnu-long-names.tar", long_names),
        ("hard-links.tar", |l| {
            let ino = |p: &str| fs::symlink_metadata(l.join(p)).unwrap().ino();
            assert_eq!(ino("bin/alias1"), ino("bin/tool"));
            assert_eq!(ino("bin/alias2"), ino("bin/tool"));
            assert_eq!(fs::symlink_metadata(l.join("bin/tool")).unwrap().nlink(), 3);
            // A hard link to a symlink links the symlink itself.
            assert_eq!(ino("bin/sym-hard"), ino("bin/sym"));
            assert!(fs::symlink_metadata(l.join("bin/sym-hard"))
                .unwrap()
                .file_type()
                .is_symlink());
        }),
        ("replaced-entries.tar", |l| {
            assert_eq!(fs::read(l.join("f")).unwrap(), b"second\n");
            assert!(l.join("becomes-dir").is_dir());
            assert_eq!(fs::read(l.join("becomes-dir/inside")).unwrap(), b"in\n");
            assert_eq!(fs::read(l.join("was-dir")).unwrap(), b"now a file\n");
            let link = fs::symlink_metadata(l.join("link")).unwrap();
            assert!(link.is_file());
            assert_eq!(fs::read(l.join("link")).unwrap(), b"not a link\n");
            assert_eq!(fs::read_link(l.join("d2")).unwrap(), Path::new("f"));
        }),
        ("dirs-after-files.tar", |l| {
            assert_eq!(fs::read(l.join("late/sub/file")).unwrap(), b"f\n");
            let sub = fs::metadata(l.join("late/sub")).unwrap();
            assert_eq!(
                (sub.mode() & 0o7777, sub.uid(), sub.gid(), sub.mtime()),
                (0o750, 7, 8, 1_000_000_000)
            );
            let late = fs::metadata(l.join("late")).unwrap();
            assert_eq!((late.mode() & 0o7777, late.mtime()), (0o711, 1_100_000_000));
        }),
        ("xattrs.tar", |l| {
            let p = l.join("usr/bin/ping");
            assert_eq!(
                xattr::get(&p, "security.capability").unwrap().unwrap(),
                [1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            );
            assert_eq!(xattr::get(&p, "user.origin").unwrap().unwrap(), b"corpus");
            assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o755);
        }),
        ("devices.tar", |l| {
            let null = fs::symlink_metadata(l.join("dev/null")).unwrap();
            assert!(null.file_type().is_char_device());
            assert_eq!(
                (null.rdev(), null.mode() & 0o7777),
                (nix::sys::stat::makedev(1, 3), 0o666)
            );
            let lp = fs::symlink_metadata(l.join("dev/loop9")).unwrap();
            assert!(lp.file_type().is_block_device());
            assert_eq!((lp.rdev(), lp.gid()), (nix::sys::stat::makedev(7, 9), 6));
            let fifo = fs::symlink_metadata(l.join("run/initctl")).unwrap();
            assert!(fifo.file_type().is_fifo());
            assert_eq!(fifo.mode() & 0o7777, 0o600);
        }),
        ("special-modes.tar", |l| {
            let m = |p: &str| fs::symlink_metadata(l.join(p)).unwrap();
            assert_eq!(m("usr/bin/su").mode() & 0o7777, 0o4755);
            assert_eq!(
                (m("usr/bin/wall").mode() & 0o7777, m("usr/bin/wall").gid()),
                (0o2755, 5)
            );
            assert_eq!(m("tmp").mode() & 0o7777, 0o1777);
            assert_eq!(
                (m("srv/shared").mode() & 0o7777, m("srv/shared").gid()),
                (0o2775, 50)
            );
        }),
        ("non-utf8-names.tar", |l| {
            let cafe = l.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
            assert_eq!(fs::read(cafe).unwrap(), b"bytes\n");
            let inner = l.join(std::ffi::OsStr::from_bytes(b"dir\xff/inner"));
            assert_eq!(fs::read(inner).unwrap(), b"bytes\n");
        }),
        ("absolute-names.tar", |l| {
            assert_eq!(fs::read(l.join("etc/hostname")).unwrap(), b"abs\n");
            assert_eq!(fs::read(l.join("etc/dotted")).unwrap(), b"dot\n");
            assert_eq!(fs::read(l.join("etc/cleaned")).unwrap(), b"clean\n");
        }),
        ("sparse.tar", |l| {
            let data = fs::read(l.join("sparse.bin")).unwrap();
            assert_eq!(data.len(), 1 << 20);
            assert_eq!(&data[512 << 10..(512 << 10) + 5], b"hello");
            let zeros = data.iter().filter(|b| **b == 0).count();
            assert_eq!(zeros, (1 << 20) - 5);
        }),
    ]
}

#[test]
fn every_corpus_layer_unpacks_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut on_disk: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = cases().iter().map(|(n, _)| n.to_string()).collect();
    tested.sort();
    assert_eq!(on_disk, tested, "every corpus file has a check");
    for (i, comp) in [Comp::None, Comp::Gzip, Comp::Zstd].into_iter().enumerate() {
        let store = ImageStore::open(&tmp.path().join(format!("store-{i}"))).unwrap();
        for (name, check) in cases() {
            let layer = unpack(&store, &tmp.path().join(format!("work-{i}")), name, comp);
            check(&layer);
        }
    }
}
