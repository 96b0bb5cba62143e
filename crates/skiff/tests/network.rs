//! Instance networking on real namespaces, veths, a bridge and nftables: outbound traffic to a
//! test host in a network namespace the test makes, what stays out of reach, DNS and calls
//! between services through the ingress, the metadata server, service accounts and identity
//! tokens, `--egress none`, and job tasks.

use skiff_testkit::TestServer;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_skiff"))
}

const GREETING: &str = "hello from the test host";

/// A host outside Skiff: a network namespace the test makes, joined to the host by a veth
/// pair on a /30, with an HTTP server that answers [`GREETING`]. Everything goes on drop.
struct TestHost {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestHost {
    fn start() -> TestHost {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() * 7 + n) % 16000;
        let (third, fourth) = (id / 63 % 256, (id % 63) * 4);
        let ns = format!("skiff-test-{}-{n}", std::process::id());
        let host_if = format!("skth{id}");
        let peer = format!("sktp{id}");
        let host_addr = format!("10.199.{third}.{}", fourth + 1);
        let addr: Ipv4Addr = format!("10.199.{third}.{}", fourth + 2).parse().unwrap();
        let mut host = TestHost {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr,
            stop: Arc::new(AtomicBool::new(false)),
            server: None,
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &peer,
        ]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", &host_addr]);
        let nsfile = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        let stop = host.stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        host.server = Some(std::thread::spawn(move || {
            nix::sched::setns(nsfile.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = TcpListener::bind((addr, 8000)).unwrap();
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            // Bounded: the test host answers for at most five minutes.
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        // Reads what the client sends until it pauses (it may upload a body).
                        let mut buf = [0u8; 65536];
                        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                        let _ = write!(
                            c,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{GREETING}",
                            GREETING.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        host
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// An HTTP/1.0 GET from inside an instance to `addr:port` with busybox's `nc` (the image's
/// busybox is static glibc, whose `wget` cannot look up the `http` service without NSS
/// modules); `extra` are more header lines. `nc` stops reading when its input ends, so the
/// input lasts a second beyond the request. The raw response is followed by `rc=N`, `nc`'s
/// exit status (1 when the connection is refused or times out after 3 s).
fn http_from(
    s: &TestServer,
    service: &str,
    addr: &str,
    port: u16,
    host: &str,
    path: &str,
    extra: &[&str],
) -> String {
    let headers: String = extra.iter().map(|h| format!("{h}\\r\\n")).collect();
    s.sh(service,
        &format!(
            "{{ printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n{headers}\\r\\n'; sleep 1; }} | nc -w 3 {addr} {port} 2>&1; echo rc=$?"
        ),
    )
}

/// Whether `out` (from [`http_from`]) is a response with this status.
fn status_is(out: &str, code: u16) -> bool {
    out.lines().next().is_some_and(|l| {
        l.starts_with("HTTP/") && l.split_whitespace().nth(1) == Some(&code.to_string())
    })
}

/// Whether the connection could not be made (refused, dropped, timed out).
fn unreachable(out: &str) -> bool {
    !out.starts_with("HTTP/") && out.trim_end().ends_with("rc=1")
}

/// Resolves `name` inside an instance with busybox's own resolver (from its /etc/resolv.conf).
fn resolve(s: &TestServer, service: &str, name: &str) -> String {
    let out = s.sh(service, &format!("nslookup {name} 2>&1"));
    out.lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .find_map(|l| l.strip_prefix("Address:"))
        .map(|a| a.split_whitespace().next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("{name} does not resolve inside {service}: {out}"))
}

fn deploy(s: &TestServer, service: &str, extra: &[&str]) {
    let mut args = vec![
        "deploy",
        service,
        "--image",
        "web",
        "--allow-unauthenticated",
    ];
    args.extend_from_slice(extra);
    s.ok(&args);
}

/// The instance's own address, from the `/etc/hosts` Skiff wrote for it.
fn instance_ip(s: &TestServer, service: &str) -> String {
    let hosts = s.sh(service, "cat /etc/hosts");
    hosts
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

fn gateway(s: &TestServer) -> String {
    let subnet = s.subnet.as_deref().expect("the test server has a subnet");
    subnet.replace(".0/24", ".1")
}

const FLAVOR: &str = "Metadata-Flavor: Google";

#[test]
fn instances_reach_the_outside_and_other_services_but_not_the_host() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    let host = TestHost::start();
    deploy(&s, "net", &[]);
    deploy(&s, "peer", &[]);
    let test_host = host.addr.to_string();

    // Outbound: the test host answers, by address.
    let out = http_from(&s, "net", &test_host, 8000, "test", "/", &[]);
    assert!(status_is(&out, 200) && out.contains(GREETING), "{out}");

    // The files Docker and Cloud Run write: the platform's resolver, the instance's name.
    let gw = gateway(&s);
    let resolv = s.sh("net", "cat /etc/resolv.conf");
    assert!(resolv.contains(&format!("nameserver {gw}")), "{resolv}");
    let me = instance_ip(&s, "net");
    assert!(me.starts_with(&gw[..gw.len() - 1]), "{me} in {gw}");

    // Another service by the URL deploy prints: its name resolves to the ingress as instances
    // see it, which routes by Host as for any client.
    assert_eq!(resolve(&s, "net", "peer.localhost"), gw);
    let out = http_from(&s, "net", &gw, s.ingress, "peer.localhost", "/", &[]);
    assert!(
        status_is(&out, 200) && out.contains("hello from skiff"),
        "{out}"
    );
    let out = http_from(&s, "net", &gw, s.ingress, "nobody.localhost", "/", &[]);
    assert!(status_is(&out, 404), "{out}");

    // Nothing else of the host: a port listening on every host address is out of reach, on
    // the gateway and on the host's address towards the test host; so is the control API.
    let open = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = open.local_addr().unwrap().port();
    let o = host.addr.octets();
    let host_side = format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3] - 1);
    for (addr, port) in [
        (gw.as_str(), port),
        (host_side.as_str(), port),
        (gw.as_str(), s.api),
        ("127.0.0.1", s.api),
    ] {
        let out = http_from(&s, "net", addr, port, "x", "/", &[]);
        assert!(
            unreachable(&out),
            "{addr}:{port} reachable from inside: {out}"
        );
    }
    // The same port answers from the host itself (the check above can fail).
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());

    // Another instance directly: out of reach, though it answers at its own address.
    let peer_ip = instance_ip(&s, "peer");
    let own = http_from(&s, "peer", &peer_ip, 8080, "x", "/", &[]);
    assert!(status_is(&own, 200), "{own}");
    let out = http_from(&s, "net", &peer_ip, 8080, "x", "/", &[]);
    assert!(unreachable(&out), "another instance reachable: {out}");

    // The metadata server, by name and by address, only with Metadata-Flavor: Google.
    let md = resolve(&s, "net", "metadata.google.internal");
    assert_eq!(md, "169.254.169.254");
    let get = |path: &str, extra: &[&str]| {
        http_from(&s, "net", &md, 80, "metadata.google.internal", path, extra)
    };
    let out = get("/computeMetadata/v1/project/project-id", &[FLAVOR]);
    assert!(
        status_is(&out, 200) && out.contains("\r\n\r\ndefault"),
        "{out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("metadata-flavor: google"),
        "{out}"
    );
    let out = get(
        "/computeMetadata/v1/instance/service-accounts/default/email",
        &[FLAVOR],
    );
    assert!(
        out.contains(&skiff_model::default_service_account("default")),
        "{out}"
    );
    let number = skiff_model::project_number("default");
    let out = get("/computeMetadata/v1/instance/region", &[FLAVOR]);
    assert!(
        out.contains(&format!("projects/{number}/regions/us-central1")),
        "{out}"
    );
    let out = get("/computeMetadata/v1/project/?recursive=true", &[FLAVOR]);
    assert!(
        out.contains(&format!("\"numericProjectId\":\"{number}\"")),
        "{out}"
    );
    let out = get("/computeMetadata/v1/project/project-id", &[]);
    assert!(status_is(&out, 403), "{out}");
    let out = get(
        "/computeMetadata/v1/project/project-id",
        &[FLAVOR, "X-Forwarded-For: 1.2.3.4"],
    );
    assert!(status_is(&out, 403), "{out}");
}

#[test]
fn identity_tokens_from_the_metadata_server_call_private_services_by_iam() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    let caller = "caller@default.iam.gserviceaccount.com";
    let stranger = "stranger@default.iam.gserviceaccount.com";
    deploy(&s, "caller", &["--service-account", caller]);
    deploy(&s, "stranger", &["--service-account", stranger]);
    s.ok(&["deploy", "private", "--image", "web"]);
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "private",
        "--member",
        &format!("serviceAccount:{caller}"),
        "--role",
        "roles/run.invoker",
    ]);
    let policy = s.ok(&["services", "get-iam-policy", "private"]);
    assert!(policy.contains(caller), "{policy}");

    let gw = gateway(&s);
    let audience = format!("http://private.localhost:{}/", s.ingress);
    let call = |service: &str| {
        let token = http_from(
            &s,
            service,
            "169.254.169.254",
            80,
            "metadata.google.internal",
            &format!(
                "/computeMetadata/v1/instance/service-accounts/default/identity?audience={audience}"
            ),
            &[FLAVOR],
        );
        assert!(status_is(&token, 200), "{token}");
        let jwt = token
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| b.split("rc=").next())
            .unwrap()
            .trim()
            .to_string();
        let auth = format!("Authorization: Bearer {jwt}");
        http_from(
            &s,
            service,
            &gw,
            s.ingress,
            "private.localhost",
            "/",
            &[&auth],
        )
    };
    let out = call("caller");
    assert!(
        status_is(&out, 200) && out.contains("hello from skiff"),
        "{out}"
    );
    let out = call("stranger");
    assert!(status_is(&out, 403), "{out}");

    // Taking the binding back shuts the caller out too.
    s.ok(&[
        "services",
        "remove-iam-policy-binding",
        "private",
        "--member",
        &format!("serviceAccount:{caller}"),
        "--role",
        "roles/run.invoker",
    ]);
    let out = call("caller");
    assert!(status_is(&out, 403), "{out}");
    // The service account is the revision's, and export carries it.
    let export = s.ok(&["services", "describe", "caller", "--format", "export"]);
    assert!(
        export.contains(&format!("serviceAccountName: {caller}")),
        "{export}"
    );
    let bad = s.fails(&[
        "deploy",
        "x",
        "--image",
        "web",
        "--service-account",
        "nobody",
    ]);
    assert!(bad.contains("service account"), "{bad}");
}

#[test]
fn egress_none_reaches_nothing() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    let host = TestHost::start();
    let test_host = host.addr.to_string();
    deploy(&s, "open", &[]);
    deploy(&s, "sealed", &["--egress", "none"]);
    let out = http_from(&s, "sealed", &test_host, 8000, "test", "/", &[]);
    assert!(unreachable(&out), "{out}");
    let gw = gateway(&s);
    let out = http_from(&s, "sealed", &gw, s.ingress, "open.localhost", "/", &[]);
    assert!(unreachable(&out), "{out}");
    let links = s.sh("sealed", "ls /sys/class/net");
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "{links}"
    );
    let export = s.ok(&["services", "describe", "sealed", "--format", "export"]);
    assert!(export.contains("skiff.dev/egress: none"), "{export}");
    // Back to all: the next revision reaches out again.
    deploy(&s, "sealed", &["--egress", "all"]);
    let out = http_from(&s, "sealed", &test_host, 8000, "test", "/", &[]);
    assert!(status_is(&out, 200), "{out}");
}

#[test]
fn job_tasks_reach_the_test_host() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    let host = TestHost::start();
    s.ok(&[
        "jobs",
        "create",
        "fetcher",
        "--image",
        "web",
        "--tasks",
        "2",
        "--max-retries",
        "0",
        "--command",
        "/bin/sh",
        "--args",
        &format!(
            "-c,{{ printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 1; }} | nc -w 3 {} 8000 | grep -q '{GREETING}'",
            host.addr
        ),
    ]);
    s.ok(&["jobs", "execute", "fetcher", "--wait"]);
}

/// The report's line for a service, once a checkpoint has recorded `field` at `at_least`.
fn usage_line(s: &TestServer, service: &str, field: &str, at_least: u64) -> serde_json::Value {
    let mut line = serde_json::Value::Null;
    s.wait_for("the network usage to be recorded", 20, || {
        let out = s.ok(&[
            "billing",
            "report",
            "--service",
            service,
            "--format",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        line = v["lines"][0].clone();
        line[field].as_u64().unwrap_or(0) >= at_least
    });
    line
}

#[test]
fn network_usage_is_metered_and_only_internet_egress_is_billed() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    let host = TestHost::start();
    deploy(&s, "net", &[]);
    deploy(&s, "peer", &[]);
    const MIB: u64 = 1 << 20;
    // 1 MiB to the test host: the internet, as far as billing goes.
    let out = s.sh("net",
        &format!(
            "{{ dd if=/dev/zero bs=1024 count=1024 2>/dev/null; sleep 1; }} | nc -w 3 {} 8000; echo rc=$?",
            host.addr
        ),
    );
    assert!(out.contains(GREETING), "{out}");
    // 2 MiB to another service, through the ingress on the gateway: free.
    let gw = gateway(&s);
    let out = s.sh("net",
        &format!(
            "{{ printf 'POST /cgi-bin/sh?cat%%20%%3E/dev/null HTTP/1.0\\r\\nHost: peer.localhost\\r\\nContent-Length: {}\\r\\n\\r\\n'; dd if=/dev/zero bs=1024 count=2048 2>/dev/null; sleep 1; }} | nc -w 3 {gw} {}; echo rc=$?",
            2 * MIB,
            s.ingress
        ),
    );
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    let line = usage_line(&s, "net", "sentBytes", 3 * MIB);
    let egress = line["egressBytes"].as_u64().unwrap();
    assert!(
        (MIB..MIB + MIB / 4).contains(&egress),
        "egress {egress} bytes for 1 MiB sent out: {line}"
    );
    let networking = line["cost"]["networking"].as_f64().unwrap();
    let want = egress as f64 / (1u64 << 30) as f64 * 0.12;
    assert!((networking - want).abs() < 1e-9, "{line}");
    // The replies came back in: received, never billed.
    assert!(line["receivedBytes"].as_u64().unwrap() > 0, "{line}");
    // And /metrics has Cloud Run's names for them.
    let (code, text) = s.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let sent = text
        .lines()
        .find(|l| {
            l.starts_with("run_container_network_sent_bytes_count")
                && l.contains("service_name=\"net\"")
        })
        .unwrap_or_else(|| panic!("no sent bytes for net in {text}"));
    let v: f64 = sent.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v >= (3 * MIB) as f64, "{sent}");
}

#[test]
fn an_internal_service_answers_only_instances_and_jobs() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    deploy(&s, "back", &["--ingress", "internal"]);
    deploy(&s, "front", &[]);
    let export = s.ok(&["services", "describe", "back", "--format", "export"]);
    assert!(
        export.contains("run.googleapis.com/ingress: internal"),
        "{export}"
    );
    assert!(s
        .ok(&["services", "describe", "back"])
        .lines()
        .any(|l| l.starts_with("Ingress") && l.ends_with("internal")));

    // From outside: 404, saying why.
    let (code, body) = s.get("back.localhost", "/", None);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("ingress is internal"), "{body}");
    // From another instance, by the URL deploy printed: served.
    let gw = gateway(&s);
    let out = http_from(&s, "front", &gw, s.ingress, "back.localhost", "/", &[]);
    assert!(
        status_is(&out, 200) && out.contains("hello from skiff"),
        "{out}"
    );
    // From a job task too.
    s.ok(&[
        "jobs",
        "create",
        "caller",
        "--image",
        "web",
        "--max-retries",
        "0",
        "--command",
        "/bin/sh",
        "--args",
        &format!(
            "-c,{{ printf 'GET / HTTP/1.0\\r\\nHost: back.localhost\\r\\n\\r\\n'; sleep 1; }} | nc -w 3 {gw} {} | grep -q 'hello from skiff'",
            s.ingress
        ),
    ]);
    s.ok(&["jobs", "execute", "caller", "--wait"]);

    // A value gcloud does not know is refused, by the CLI and by the API, and changes nothing.
    let err = s.fails(&["deploy", "back", "--ingress", "public"]);
    assert!(err.contains("public"), "{err}");
    let (code, body) = s.api(
        "GET",
        "/apis/serving.knative.dev/v1/namespaces/default/services/back",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let mut svc: serde_json::Value = serde_json::from_str(&body).unwrap();
    svc["metadata"]["annotations"]["run.googleapis.com/ingress"] = "public".into();
    let (code, body) = s.api(
        "PUT",
        "/apis/serving.knative.dev/v1/namespaces/default/services/back",
        Some(&svc.to_string()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("run.googleapis.com/ingress"), "{body}");
    assert_eq!(s.get("back.localhost", "/", None).0, 404);

    // Back to all: served from outside again.
    deploy(&s, "back", &["--ingress", "all"]);
    let (code, body) = s.get("back.localhost", "/", None);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn instances_call_the_pubsub_api_on_the_gateway_without_credentials() {
    let (s, _tmp) = TestServer::with_web_image(bin(), &[]);
    deploy(&s, "app", &[]);
    s.ok(&["pubsub", "topics", "create", "from-host"]);
    let gw = gateway(&s);
    let out = http_from(
        &s,
        "app",
        &gw,
        s.pubsub,
        &format!("{gw}:{}", s.pubsub),
        "/v1/projects/default/topics",
        &[],
    );
    assert!(status_is(&out, 200), "{out}");
    assert!(out.contains("projects/default/topics/from-host"), "{out}");
}
