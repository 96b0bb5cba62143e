//! `runc` bundles of a test image, for benchmarks that measure Skiff beside a raw `runc run`
//! of the same image.

use std::path::Path;
use std::process::Command;

/// Unpacks the single layer of the OCI layout `layout` into `dir/rootfs` and writes a
/// `config.json` (from `runc spec`) that runs `args`. `readonly` shares one rootfs between
/// concurrent containers; `host_network` drops the network namespace so a benchmark can reach
/// the container on the host's loopback.
pub fn bundle(layout: &Path, dir: &Path, args: &[String], readonly: bool, host_network: bool) {
    let read_json = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
    let layer =
        std::fs::File::open(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(layer))
        .unpack(dir.join("rootfs"))
        .unwrap();
    crate::run(Command::new("runc").arg("spec").current_dir(dir));
    let cfg_path = dir.join("config.json");
    let mut cfg = read_json(&cfg_path);
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(args);
    cfg["root"]["readonly"] = readonly.into();
    if host_network {
        let ns: Vec<serde_json::Value> = cfg["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] != "network")
            .cloned()
            .collect();
        cfg["linux"]["namespaces"] = serde_json::Value::Array(ns);
    }
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}
