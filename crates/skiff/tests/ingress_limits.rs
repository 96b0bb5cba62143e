//! End-to-end tests of the limits that let the ingress face the internet: the header read
//! timeout, the header size limit (431) and the connections one client address may hold.
//! They need root (the server does).

use skiff_testkit::TestServer;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// Connects to the ingress from the loopback address `from`.
fn connect_from(from: Ipv4Addr, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

/// Reads until the server closes the connection (or resets it); returns what came.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the server kept the connection open past the read timeout")
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the server kept the connection open past the read timeout")
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request on a new connection from `from`: the response's status line.
fn request_from(from: Ipv4Addr, port: u16, extra_header: &str) -> String {
    let mut s = connect_from(from, port);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: nothing.localhost\r\n{extra_header}Connection: close\r\n\r\n"
    );
    // A connection the server closed at once may refuse the write: then nothing came back.
    if s.write_all(req.as_bytes()).is_err() {
        return String::new();
    }
    read_to_close(&mut s)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_stalled_request_head_or_a_silent_connection_is_closed() {
    let s = TestServer::start(Path::new(BIN), &["--header-read-timeout", "1s"]);
    let began = Instant::now();
    // Half a request line, then nothing.
    let mut half = connect_from(Ipv4Addr::LOCALHOST, s.ingress);
    half.write_all(b"GET / HT").unwrap();
    // Nothing at all (hyper still waits to tell HTTP/1.1 from HTTP/2).
    let mut silent = connect_from(Ipv4Addr::LOCALHOST, s.ingress);
    // Half the HTTP/2 preface.
    let mut preface = connect_from(Ipv4Addr::LOCALHOST, s.ingress);
    preface.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    for (what, conn) in [
        ("half a request line", &mut half),
        ("a silent connection", &mut silent),
        ("half the HTTP/2 preface", &mut preface),
    ] {
        let got = read_to_close(conn);
        assert!(
            !got.contains("200"),
            "{what} got an answer: {got:?}\nserver log: {}",
            s.log()
        );
    }
    // Closed by the timeout, not by the reads' own 120 s limit.
    assert!(began.elapsed() < Duration::from_secs(100));
    // A whole request is still served.
    assert!(request_from(Ipv4Addr::LOCALHOST, s.ingress, "").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_request_head_past_64_kib_gets_431() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let big = format!("X-Big: {}\r\n", "a".repeat(100_000));
    let status = request_from(Ipv4Addr::LOCALHOST, s.ingress, &big);
    assert!(
        status.starts_with("HTTP/1.1 431"),
        "a 100 KB header got {status:?}"
    );
    // A 30 KB one reaches the router (which has no such service).
    let fits = format!("X-Big: {}\r\n", "a".repeat(30_000));
    let status = request_from(Ipv4Addr::LOCALHOST, s.ingress, &fits);
    assert!(
        status.starts_with("HTTP/1.1 404"),
        "a 30 KB header got {status:?}"
    );
}

#[test]
fn connections_past_the_per_client_limit_are_closed_and_others_still_served() {
    let s = TestServer::start(Path::new(BIN), &["--max-connections-per-client", "3"]);
    let greedy = Ipv4Addr::new(127, 0, 0, 2);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = connect_from(greedy, s.ingress);
            c.write_all(b"GET / HTTP/1.1\r\nHost: nothing.localhost\r\n\r\n")
                .unwrap();
            // Each is served (and kept alive): read its whole 404.
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
            c
        })
        .collect();
    // The fourth from the same address is closed without an answer.
    let status = request_from(greedy, s.ingress, "");
    assert_eq!(status, "", "a connection past the limit was served");
    // Another client is served meanwhile.
    assert!(request_from(Ipv4Addr::LOCALHOST, s.ingress, "").starts_with("HTTP/1.1 404"));
    // Once one of the three is closed, the address gets a place again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = request_from(greedy, s.ingress, "");
        if status.starts_with("HTTP/1.1 404") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no place given back\nserver log: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_flags_come_from_a_config_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // The test server's own --http and --api on the command line win over the file's.
    std::fs::write(
        &config,
        "max-connections-per-client: 1\nhttp: 127.0.0.1:1\napi: 127.0.0.1:1\n",
    )
    .unwrap();
    let s = TestServer::start(Path::new(BIN), &["--config", config.to_str().unwrap()]);
    let mut held = connect_from(Ipv4Addr::new(127, 0, 0, 3), s.ingress);
    held.write_all(b"GET / HTTP/1.1\r\nHost: nothing.localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = held.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
    let second = request_from(Ipv4Addr::new(127, 0, 0, 3), s.ingress, "");
    assert_eq!(
        second, "",
        "the file's max-connections-per-client: 1 was not applied"
    );

    // A key that is no flag is refused, naming it, before anything starts.
    std::fs::write(&config, "max-connections-per-clients: 1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["server", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: unknown key \"max-connections-per-clients\""),
        "{err}"
    );
}

/// Descriptors the process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn out_of_descriptors_the_ingress_waits_and_serves_again() {
    let s = TestServer::start(
        Path::new(BIN),
        &["--max-connections-per-client", "0", "--no-instance-network"],
    );
    // The listeners take connections before start-up is over: wait for its end, so that the
    // descriptors counted below are all the server will hold when idle.
    s.wait_for("the server to finish starting", 60, || {
        s.log().contains("serving: ingress")
    });
    let pid = s.pid().expect("the server runs");
    let before = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("the server's descriptor limit");
    // A few descriptors to spare, then none.
    let limit = open_fds(pid) + 4;
    let set_limit = |soft: &str| {
        let ok = std::process::Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={soft}:"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "prlimit failed");
    };
    set_limit(&limit.to_string());
    let held: Vec<TcpStream> = (0..20)
        .map(|_| connect_from(Ipv4Addr::LOCALHOST, s.ingress))
        .collect();
    s.wait_for("the ingress to run out of descriptors", 60, || {
        s.log().contains("cannot accept connections")
    });
    // Still running, and serving again once descriptors are free.
    set_limit(&before);
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !request_from(Ipv4Addr::LOCALHOST, s.ingress, "").starts_with("HTTP/1.1 404") {
        assert!(
            Instant::now() < deadline,
            "the ingress did not serve again\nserver log: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    // The header read timeout is long, so only the idle timeout can end the connection.
    let s = TestServer::start(
        Path::new(BIN),
        &["--idle-timeout", "2s", "--header-read-timeout", "60s"],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.ingress))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let driver = tokio::spawn(conn);
        let began = Instant::now();
        for _ in 0..2 {
            let req = http::Request::get("http://nothing.localhost/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let res = send.send_request(req).await.unwrap();
            assert_eq!(res.status(), 404);
        }
        // The client answers the server's pings, so only the idle timeout closes it (with a
        // GOAWAY, which ends the client's connection task cleanly).
        let ended = tokio::time::timeout(Duration::from_secs(50), driver).await;
        assert!(
            ended.is_ok(),
            "the idle HTTP/2 connection was kept\nserver log: {}",
            s.log()
        );
        assert!(began.elapsed() >= Duration::from_secs(2));
        assert!(send.is_closed() || send.ready().await.is_err());
    });
}
