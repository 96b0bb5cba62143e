//! Fuzzes the layer unpacker with arbitrary bytes as a layer blob (plain, gzip or zstd tar).
//! Besides not crashing, the unpacker must never write outside the layer directory: a sibling
//! directory and its file are checked after every input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::fs;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().unwrap();
    let blob = tmp.path().join("blob");
    let layer = tmp.path().join("layer");
    let outside = tmp.path().join("outside");
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"keep").unwrap();
    fs::write(&blob, data).unwrap();
    let _ = skiff_image::unpack_layer_file(&blob, &layer);
    let mut top: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["blob", "layer", "outside"], "wrote beside the layer");
    let inside: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(inside, ["keep"], "wrote into the sibling directory");
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
    assert!(!std::path::Path::new("/pwned").exists());
});
