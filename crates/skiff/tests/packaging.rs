//! The files a system install uses: `packaging/skiff.service` passes `systemd-analyze verify`
//! without a warning (it needs systemd-analyze, from Debian's `systemd`), and the sample
//! `packaging/config.yaml` starts a server. No unit is started on the machine.

use skiff_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .join(file)
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(packaging("skiff.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/skiff server --config /etc/skiff/config.yaml"));
    // verify checks that ExecStart's program exists: the built binary stands in for the
    // installed one; every other line is checked as shipped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skiff.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/skiff", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed for this test");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on unknown keys and bad values, only warning about them.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn the_sample_config_starts_a_server() {
    let config = packaging("config.yaml");
    // The test server's --data-dir, --http and --api on the command line win over the file's.
    let s = TestServer::start(Path::new(BIN), &["--config", config.to_str().unwrap()]);
    let (code, body) = s.get("nothing.localhost", "/", None);
    assert_eq!(code, 404, "{body}");
    s.ok(&["services", "list"]);
}
