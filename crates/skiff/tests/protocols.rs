//! End-to-end tests of what travels between a client and an app through the ingress: the
//! request target byte for byte, the forwarding and trace headers, WebSockets, gRPC end to end
//! and gRPC health checks as startup and liveness probes.
//!
//! The app is this very binary: with `SKIFF_TEST_APP` set (as the test image sets it) `main`
//! serves on `$PORT` instead of running tests, so the image needs nothing but this file and
//! its shared libraries ([`ImageSpec::binaries`]). Hence the test harness of its own
//! (`libtest-mimic`, `harness = false` in Cargo.toml).

use futures::{SinkExt, StreamExt};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::Value;
use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn main() {
    if std::env::var_os("SKIFF_TEST_APP").is_some() {
        app::serve();
        return;
    }
    let args = Arguments::from_args();
    let tests = vec![
        Trial::test(
            "request_targets_reach_the_app_byte_for_byte",
            request_targets_reach_the_app_byte_for_byte,
        ),
        Trial::test(
            "forwarding_and_trace_headers_are_added_or_kept",
            forwarding_and_trace_headers_are_added_or_kept,
        ),
        Trial::test(
            "websockets_tunnel_through_the_ingress_as_one_request",
            websockets_tunnel_through_the_ingress_as_one_request,
        ),
        Trial::test(
            "use_http2_sends_http2_to_the_container_and_grpc_streams_both_ways",
            use_http2_sends_http2_to_the_container_and_grpc_streams_both_ways,
        ),
        Trial::test(
            "grpc_startup_probes_pass_on_serving_and_fail_the_revision_otherwise",
            grpc_startup_probes_pass_on_serving_and_fail_the_revision_otherwise,
        ),
        Trial::test(
            "a_grpc_liveness_probe_that_turns_not_serving_restarts_the_instance",
            a_grpc_liveness_probe_that_turns_not_serving_restarts_the_instance,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// A server with the app image imported as `app:latest`, deployed as public service `name`.
fn server_with_app(name: &str, deploy: &[&str]) -> (TestServer, tempfile::TempDir) {
    let (s, tmp) = server_with_app_image();
    let mut args = vec!["deploy", name, "--image", "app", "--allow-unauthenticated"];
    args.extend_from_slice(deploy);
    s.ok(&args);
    (s, tmp)
}

/// A server with the app image imported as `app:latest`.
fn server_with_app_image() -> (TestServer, tempfile::TempDir) {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let spec = ImageSpec::current_exe_app("SKIFF_TEST_APP");
    let layout = busybox_image(&tmp.path().join("app"), "app", &spec);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    (s, tmp)
}

/// A public Knative Service running the app image, its container given `probes` (YAML lines
/// indented for the container), applied with `services replace`.
fn replace_with_probes(
    s: &TestServer,
    dir: &Path,
    name: &str,
    probes: &str,
) -> std::process::Output {
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
      - image: app
{probes}"
    );
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    s.skiff(&["services", "replace", file.to_str().unwrap()])
}

/// Sends `head` (a request line and headers, without the blank line) on a new connection,
/// with `Connection: close`; returns the status and the body as the app's JSON echo.
fn raw(port: u16, head: &str) -> (u16, Value) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(c, "{head}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (res_head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = res_head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = serde_json::from_str(body).unwrap_or(Value::String(text.clone()));
    (status, json)
}

fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter(|h| h[0].as_str() == Some(name))
                .filter_map(|h| h[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn request_targets_reach_the_app_byte_for_byte() -> Result<(), Failed> {
    let (s, _tmp) = server_with_app("echo", &[]);
    // (request line, target the app must see)
    let cases = [
        ("GET //headers HTTP/1.1", "//headers"),
        ("GET /a/./b/../c//d HTTP/1.1", "/a/./b/../c//d"),
        ("GET /q?x=%2F&y=&&z=a+b HTTP/1.1", "/q?x=%2F&y=&&z=a+b"),
        ("GET /empty-query? HTTP/1.1", "/empty-query?"),
        (
            "GET /%7Euser/%2e%2e/%E2%82%AC HTTP/1.1",
            "/%7Euser/%2e%2e/%E2%82%AC",
        ),
        ("GET /semi;p=1/x HTTP/1.1", "/semi;p=1/x"),
        // Absolute form (RFC 9112 §3.2.2): the app gets origin form.
        (
            "GET http://echo.localhost//abs//path?q=1 HTTP/1.1",
            "//abs//path?q=1",
        ),
        ("GET http://echo.localhost HTTP/1.1", "/"),
        // Asterisk form (§3.2.4).
        ("OPTIONS * HTTP/1.1", "*"),
    ];
    for (line, want) in cases {
        let (code, echo) = raw(s.ingress, &format!("{line}\r\nHost: echo.localhost"));
        assert_eq!(code, 200, "{line}: {echo}");
        assert_eq!(echo["target"], want, "{line}");
        assert_eq!(echo["version"], "HTTP/1.1", "{line}");
    }
    // Over h2c as well: the :path reaches the app unchanged, over HTTP/1.1.
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = client
        .get(format!("http://127.0.0.1:{}//headers?a=%2F", s.ingress))
        .header("Host", "echo.localhost")
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let echo: Value = r.json().unwrap();
    assert_eq!(echo["target"], "//headers?a=%2F");
    assert_eq!(echo["version"], "HTTP/1.1");
    Ok(())
}

fn trace_id_of_traceparent(v: &str) -> String {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    assert!(parts[1].len() == 32 && parts[2].len() == 16, "{v}");
    parts[1].to_string()
}

fn forwarding_and_trace_headers_are_added_or_kept() -> Result<(), Failed> {
    let (s, _tmp) = server_with_app("hdrs", &[]);
    let get = |extra: &str| {
        let (code, echo) = raw(
            s.ingress,
            &format!("GET /h HTTP/1.1\r\nHost: hdrs.localhost{extra}"),
        );
        assert_eq!(code, 200, "{echo}");
        echo
    };
    // Nothing from the client: the ingress adds them all.
    let echo = get("");
    assert_eq!(header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&echo, "forwarded"), ["for=127.0.0.1;proto=http"]);
    let tp = header(&echo, "traceparent");
    assert_eq!(tp.len(), 1, "{echo}");
    let trace = trace_id_of_traceparent(tp[0]);
    let ct = header(&echo, "x-cloud-trace-context");
    assert_eq!(ct.len(), 1, "{echo}");
    assert!(ct[0].starts_with(&format!("{trace}/")), "{ct:?} {tp:?}");
    // Every request gets a trace of its own.
    let other = trace_id_of_traceparent(header(&get(""), "traceparent")[0]);
    assert_ne!(trace, other);

    // The client's proxies and trace are kept.
    let echo = get(
        "\r\nForwarded: for=192.0.2.60;proto=https\r\nX-Forwarded-For: 192.0.2.60\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    assert_eq!(
        header(&echo, "forwarded"),
        ["for=192.0.2.60;proto=https, for=127.0.0.1;proto=http"]
    );
    assert_eq!(header(&echo, "x-forwarded-for"), ["192.0.2.60, 127.0.0.1"]);
    assert_eq!(
        header(&echo, "traceparent"),
        ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
    );
    assert_eq!(
        header(&echo, "x-cloud-trace-context"),
        ["4bf92f3577b34da6a3ce929d0e0e4736/67667974448284343;o=1"]
    );
    let echo = get("\r\nX-Cloud-Trace-Context: 105445aa7843bc8bf206b12000100000/1;o=1");
    assert_eq!(
        header(&echo, "x-cloud-trace-context"),
        ["105445aa7843bc8bf206b12000100000/1;o=1"]
    );
    assert_eq!(
        header(&echo, "traceparent"),
        ["00-105445aa7843bc8bf206b12000100000-0000000000000001-01"]
    );
    // A malformed traceparent is replaced by a new trace.
    let echo = get("\r\ntraceparent: not-a-trace");
    trace_id_of_traceparent(header(&echo, "traceparent")[0]);

    // An HTTP/2 client's cookie fields reach the HTTP/1.1 app as one header (RFC 9113 §8.2.3).
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--http2-prior-knowledge"])
        .args([
            "-H",
            "Host: hdrs.localhost",
            "-H",
            "Cookie: a=1",
            "-H",
            "Cookie: b=2",
        ])
        .arg(format!("http://127.0.0.1:{}/h", s.ingress))
        .output()
        .unwrap();
    let echo: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(header(&echo, "cookie"), ["a=1; b=2"], "{echo}");
    Ok(())
}

/// The in-flight count `skiff instances list` shows for the service's one instance.
fn in_flight(s: &TestServer, service: &str) -> Option<u64> {
    let list = s.instances(service);
    (list.len() == 1).then(|| list[0]["inFlight"].as_u64().unwrap_or(0))
}

fn websockets_tunnel_through_the_ingress_as_one_request() -> Result<(), Failed> {
    let (s, _tmp) = server_with_app(
        "ws",
        &[
            "--timeout",
            "6s",
            "--concurrency",
            "1",
            "--max-instances",
            "1",
        ],
    );
    let port = s.ingress;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A real WebSocket client; messages of both kinds echo back in order.
    let mut ws = rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (ws, res) = tokio_tungstenite::client_async("ws://ws.localhost/ws", stream)
            .await
            .expect("websocket handshake through the ingress");
        assert_eq!(res.status(), 101);
        ws
    });
    rt.block_on(async {
        for i in 0..20 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 255]))
            .await
            .unwrap();
        for i in 0..20 {
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(m, Message::text(format!("hello {i}")));
        }
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m, Message::binary(vec![0u8, 1, 2, 255]));
    });
    // While open it is one request in flight on the instance (concurrency 1: the slot is
    // taken), so a plain request waits in the queue until the socket closes.
    s.wait_for("the socket counted in flight", 30, || {
        in_flight(&s, "ws") == Some(1)
    });
    let queued =
        std::thread::spawn(move || skiff_testkit::http_get(port, "ws.localhost", "/x", None));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !queued.is_finished(),
        "a request got the slot the socket holds"
    );
    rt.block_on(async {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    let (code, _) = queued.join().unwrap();
    assert_eq!(
        code, 200,
        "the queued request is served once the socket closes"
    );
    s.wait_for("the slot freed", 30, || in_flight(&s, "ws") == Some(0));

    // A handshake that carries `Content-Length: 0`, as some clients send.
    rt.block_on(async {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        c.write_all(
            b"GET /ws HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).await.unwrap(), 1, "{head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            c,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        ws.send(Message::text("with a length")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("with a length")
        );
        // Left open, it is cut at the request timeout (6 s), as Cloud Run cuts a
        // WebSocket at its service's timeout.
        let ended = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the socket outlived the request timeout");
    });
    s.wait_for("the slot freed at the timeout", 30, || {
        in_flight(&s, "ws") == Some(0)
    });
    // Not an upgrade the app takes: its answer comes back as an ordinary response.
    let (code, echo) = raw(
        port,
        "GET /plain HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: h2c-unknown\r\nConnection: Upgrade",
    );
    assert_eq!(code, 200, "{echo}");
    assert_eq!(echo["target"], "/plain");
    Ok(())
}

/// The gRPC message of the test app's `skiff.test.Echo` service.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Note {
    #[prost(string, tag = "1")]
    pub text: String,
}

fn use_http2_sends_http2_to_the_container_and_grpc_streams_both_ways() -> Result<(), Failed> {
    let (s, _tmp) = server_with_app("grpc", &["--use-http2"]);
    let export = s.ok(&["services", "describe", "grpc", "--format", "export"]);
    assert!(export.contains("name: h2c"), "{export}");
    // The container gets HTTP/2, whatever the client spoke; the target stays as sent.
    let (code, echo) = raw(s.ingress, "GET //x?y=%2F HTTP/1.1\r\nHost: grpc.localhost");
    assert_eq!(code, 200, "{echo}");
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["target"], "http://grpc.localhost//x?y=%2F");
    assert_eq!(header(&echo, "forwarded"), ["for=127.0.0.1;proto=http"]);

    let port = s.ingress;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .origin("http://grpc.localhost".parse().unwrap())
            .connect()
            .await
            .expect("a gRPC channel to the ingress");
        let mut grpc = tonic::client::Grpc::new(channel);
        // A bidirectional stream: each note is echoed before the next is sent, so both
        // directions stream rather than wait for the other's end.
        let (tx, rx) = futures::channel::mpsc::unbounded::<Note>();
        grpc.ready().await.unwrap();
        let res = grpc
            .streaming(
                tonic::Request::new(rx),
                http::uri::PathAndQuery::from_static("/skiff.test.Echo/Chat"),
                tonic_prost::ProstCodec::<Note, Note>::default(),
            )
            .await
            .expect("the Chat call");
        let mut inbound = res.into_inner();
        for i in 0..5 {
            let text = format!("note {i}");
            tx.unbounded_send(Note { text: text.clone() }).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(60), inbound.message())
                .await
                .expect("an echo while the request stream is still open")
                .unwrap()
                .unwrap();
            assert_eq!(got.text, text);
        }
        drop(tx);
        // The app ends the stream with a status in the trailers, after its messages.
        let end = inbound.message().await.unwrap_err();
        assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
        assert_eq!(end.message(), "echoed 5 notes");

        // A call that fails at once: the status comes back as sent.
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(
                tonic::Request::new(Note { text: "x".into() }),
                http::uri::PathAndQuery::from_static("/skiff.test.Echo/Fail"),
                tonic_prost::ProstCodec::<Note, Note>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
        assert_eq!(err.message(), "no such thing");
    });
    Ok(())
}

fn grpc_startup_probes_pass_on_serving_and_fail_the_revision_otherwise() -> Result<(), Failed> {
    let (s, tmp) = server_with_app_image();
    // The app's health service answers SERVING for the server as a whole (service "").
    let out = replace_with_probes(
        &s,
        tmp.path(),
        "healthy",
        "        startupProbe:
          grpc: {}
          periodSeconds: 1
          failureThreshold: 5
        livenessProbe:
          grpc:
            service: skiff.test.Echo
          periodSeconds: 30
",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let (code, _) = s.get("healthy.localhost", "/", Some(&token));
    assert_eq!(code, 200);
    let text = s.ok(&["services", "describe", "healthy"]);
    for line in [
        "gRPC health check on port 8080 every 1s (timeout 1s, 5 failures, first after 0s)",
        "gRPC health check of \"skiff.test.Echo\" on port 8080 every 30s",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    // The probes round-trip through the export and `services replace` byte for byte.
    let first = s.ok(&["services", "describe", "healthy", "--format", "export"]);
    assert!(first.contains("grpc: {}"), "{first}");
    assert!(first.contains("service: skiff.test.Echo"), "{first}");
    let file = tmp.path().join("export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    assert_eq!(
        first,
        s.ok(&["services", "describe", "healthy", "--format", "export"])
    );

    // A service the health server reports NOT_SERVING fails the revision with that result.
    // (Ten attempts a second apart: the last one finds the app listening, however slowly it
    // starts on a busy machine.)
    let out = replace_with_probes(
        &s,
        tmp.path(),
        "unhealthy",
        "        startupProbe:
          grpc:
            service: down
          periodSeconds: 1
          failureThreshold: 10
",
    );
    assert!(!out.status.success(), "{}", s.log());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the startup probe (gRPC health check of \"down\" on port 8080) failed 10 times in a row, last: answered NOT_SERVING"),
        "{err}"
    );
    // An unknown service is gRPC's NOT_FOUND, which is a failure too.
    let out = replace_with_probes(
        &s,
        tmp.path(),
        "unknown",
        "        startupProbe:
          grpc:
            service: nothing.here
          periodSeconds: 1
          failureThreshold: 10
",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "failed 10 times in a row, last: answered NotFound: unknown service nothing.here"
        ),
        "{err}"
    );
    // Nothing listens on the probe's port: refused, in the probe's time.
    let out = replace_with_probes(
        &s,
        tmp.path(),
        "elsewhere",
        "        startupProbe:
          grpc:
            port: 9999
          periodSeconds: 1
          failureThreshold: 2
",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "(gRPC health check on port 9999) failed 2 times in a row, last: connection refused"
        ),
        "{err}"
    );
    Ok(())
}

fn a_grpc_liveness_probe_that_turns_not_serving_restarts_the_instance() -> Result<(), Failed> {
    let (s, tmp) = server_with_app_image();
    let out = replace_with_probes(
        &s,
        tmp.path(),
        "lively",
        "        livenessProbe:
          grpc: {}
          periodSeconds: 1
          failureThreshold: 2
",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let token = Some(token.as_str());
    let (code, _) = s.get("lively.localhost", "/", token);
    assert_eq!(code, 200);
    let first = s.instances("lively")[0]["id"].as_str().unwrap().to_string();
    // From now on this instance's health service answers NOT_SERVING.
    let (code, _) = s.get("lively.localhost", "/sicken", token);
    assert_eq!(code, 200);
    s.wait_for("the liveness probe to restart the instance", 120, || {
        s.ok(&["logs", "read", "--service", "lively"]).contains(&format!(
            "instance {first} failed its liveness probe (gRPC health check on port 8080) 2 times in a row, last: answered NOT_SERVING; restarting it"
        ))
    });
    s.wait_for("the instance to be gone", 60, || {
        s.instances("lively")
            .iter()
            .all(|i| i["id"] != first.as_str())
    });
    let (code, _) = s.get("lively.localhost", "/", token);
    assert_eq!(code, 200);
    Ok(())
}

/// The app the test images run: a JSON echo of each request (method, target as received,
/// version, headers in order), a WebSocket echo at `/ws`, a gRPC echo service and the gRPC
/// health service (`SERVING` for "" and `skiff.test.Echo` until `GET /sicken`, then
/// `NOT_SERVING`; `NOT_SERVING` for `down`; `NOT_FOUND` for any other name).
mod app {
    use bytes::Bytes;
    use futures::{SinkExt, StreamExt};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    pub fn serve() {
        let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
                .await
                .unwrap();
            println!("listening on {port}");
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(handle);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }

    /// Set by `GET /sicken`: the health service answers `NOT_SERVING` from then on.
    static SICK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, tonic::Status>;

    /// `grpc.health.v1.Health/Check`.
    async fn health(req: Request<Incoming>) -> Response<AppBody> {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
        let codec = tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
        let check = tower::service_fn(|r: tonic::Request<HealthCheckRequest>| async move {
            let status = match r.get_ref().service.as_str() {
                "" | "skiff.test.Echo" if !SICK.load(Ordering::SeqCst) => ServingStatus::Serving,
                "" | "skiff.test.Echo" | "down" => ServingStatus::NotServing,
                other => return Err(tonic::Status::not_found(format!("unknown service {other}"))),
            };
            Ok(tonic::Response::new(HealthCheckResponse {
                status: status as i32,
            }))
        });
        tonic::server::Grpc::new(codec)
            .unary(check, req)
            .await
            .map(|b| b.boxed_unsync())
    }

    fn full(b: Bytes) -> AppBody {
        use http_body_util::BodyExt;
        Full::new(b).map_err(|e| match e {}).boxed_unsync()
    }

    /// `skiff.test.Echo`: `Chat` echoes each note as it comes and ends with status ABORTED
    /// "echoed N notes" (in the trailers); `Fail` answers NOT_FOUND at once.
    async fn grpc(req: Request<Incoming>) -> Response<AppBody> {
        use http_body_util::BodyExt;
        let codec = tonic_prost::ProstCodec::<super::Note, super::Note>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        let res = match req.uri().path() {
            "/skiff.test.Echo/Chat" => {
                let chat = tower::service_fn(
                    |r: tonic::Request<tonic::Streaming<super::Note>>| async move {
                        let mut inbound = r.into_inner();
                        let out = async_stream(move |tx| async move {
                            let mut n = 0;
                            while let Ok(Some(note)) = inbound.message().await {
                                n += 1;
                                if tx.unbounded_send(Ok(note)).is_err() {
                                    return;
                                }
                            }
                            let done = tonic::Status::aborted(format!("echoed {n} notes"));
                            let _ = tx.unbounded_send(Err(done));
                        });
                        Ok::<_, tonic::Status>(tonic::Response::new(out))
                    },
                );
                grpc.streaming(chat, req).await
            }
            _ => {
                let fail = tower::service_fn(|_: tonic::Request<super::Note>| async {
                    Err::<tonic::Response<super::Note>, _>(tonic::Status::not_found(
                        "no such thing",
                    ))
                });
                grpc.unary(fail, req).await
            }
        };
        res.map(|b| b.boxed_unsync())
    }

    /// A stream fed by `f` through a channel.
    fn async_stream<T: Send + 'static, F, Fut>(f: F) -> futures::channel::mpsc::UnboundedReceiver<T>
    where
        F: FnOnce(futures::channel::mpsc::UnboundedSender<T>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(f(tx));
        rx
    }

    async fn handle(mut req: Request<Incoming>) -> Result<Response<AppBody>, hyper::Error> {
        let is_grpc = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if is_grpc && req.uri().path() == "/grpc.health.v1.Health/Check" {
            return Ok(health(req).await);
        }
        if is_grpc {
            return Ok(grpc(req).await);
        }
        if req.uri().path() == "/sicken" {
            SICK.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let wants_ws = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if req.uri().path() == "/ws" && wants_ws {
            let key = req.headers().get("sec-websocket-key").unwrap().as_bytes();
            let accept = derive_accept_key(key);
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(io) = on.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(io),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(Bytes::new()))
                .unwrap());
        }
        let headers: Vec<_> = req
            .headers()
            .iter()
            .map(|(k, v)| serde_json::json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect();
        let echo = serde_json::json!({
            "method": req.method().as_str(),
            "target": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        Ok(Response::builder()
            .header("content-type", "application/json")
            .body(full(Bytes::from(echo.to_string())))
            .unwrap())
    }
}
