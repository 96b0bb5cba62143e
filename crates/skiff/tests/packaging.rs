//! The files a system install uses: `packaging/skiff.service` passes `systemd-analyze verify`
//! without a warning (it needs systemd-analyze, from Debian's `systemd`), and the sample
//! `packaging/config.yaml` starts a server; the Debian package (`cargo deb`, which CI installs
//! with `cargo install cargo-deb`) holds them, and the server it installs starts. Nothing is
//! installed on the machine and no unit is started: the package is unpacked into a temporary
//! root with `dpkg -x`.

use skiff_testkit::TestServer;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging")
        .join(file)
}

/// Runs `systemd-analyze verify` on `unit` with `installed` (the program ExecStart names)
/// replaced by `bin`, and asserts it has nothing to say.
fn verify_unit(unit: &str, installed: &str, bin: &str) {
    assert!(unit.contains(&format!(
        "ExecStart={installed} server --config /etc/skiff/config.yaml"
    )));
    // verify checks that ExecStart's program exists: the built binary stands in for the
    // installed one; every other line is checked as shipped.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skiff.service");
    std::fs::write(&path, unit.replace(installed, bin)).unwrap();
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
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(packaging("skiff.service")).unwrap();
    verify_unit(&unit, "/usr/local/bin/skiff", BIN);
}

/// Everything below the opening comment (the unit itself) of a unit file.
fn unit_body(unit: &str) -> String {
    let start = unit.find("[Unit]").expect("a [Unit] section");
    unit[start..].to_string()
}

#[test]
fn the_packaged_unit_is_the_unit_with_the_binary_in_usr_bin() {
    let unit = std::fs::read_to_string(packaging("skiff.service")).unwrap();
    let packaged = std::fs::read_to_string(packaging("deb/skiff.service")).unwrap();
    assert_eq!(
        unit_body(&packaged),
        unit_body(&unit).replace("/usr/local/bin/skiff", "/usr/bin/skiff"),
        "packaging/deb/skiff.service must follow packaging/skiff.service"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_and_its_server_starts() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    // The binary this test run built (target/debug/skiff, the dev profile's) goes in as is:
    // building the release profile here would take many minutes.
    let mut deb = Command::new("cargo");
    deb.current_dir(&workspace).args([
        "deb",
        "-p",
        "skiff",
        "--no-build",
        "--profile",
        "dev",
        "--strip",
        "--no-dbgsym",
        "--no-separate-debug-symbols",
        "--fast",
        "--output",
    ]);
    deb.arg(out.path());
    let made = deb
        .output()
        .expect("cargo-deb is needed for this test: cargo install cargo-deb --locked");
    assert!(
        made.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let package = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb");

    // Its control data: the name, what it needs, the settings as a conffile.
    let field = |f: &str| run(Command::new("dpkg-deb").arg("--field").arg(&package).arg(f));
    assert_eq!(field("Package").trim(), "skiff");
    let depends = field("Depends");
    assert!(
        depends.contains("nftables") && depends.contains("libseccomp2"),
        "{depends}"
    );
    assert!(field("Recommends").contains("buildah"));
    assert!(field("Recommends").contains("runc"));
    let control = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(&package)
        .arg(control.path()));
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/skiff/config.yaml");

    // Unpacked into a throwaway root: the files, as shipped.
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&package)
        .arg(root.path()));
    let installed = root.path().join("usr/bin/skiff");
    let unit =
        std::fs::read_to_string(root.path().join("lib/systemd/system/skiff.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(packaging("deb/skiff.service")).unwrap()
    );
    verify_unit(&unit, "/usr/bin/skiff", installed.to_str().unwrap());
    let config = root.path().join("etc/skiff/config.yaml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(packaging("config.yaml")).unwrap()
    );

    // The installed binary serves with the installed settings (the test's data dir and
    // addresses on the command line win over the file's).
    let s = TestServer::start(&installed, &["--config", config.to_str().unwrap()]);
    let (code, body) = s.get("nothing.localhost", "/", None);
    assert_eq!(code, 404, "{body}");
    s.ok(&["services", "list"]);
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.starts_with("skiff "), "{version}");
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
