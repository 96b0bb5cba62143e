//! One attempt of a container's startup or liveness probe (Cloud Run's health checks): a TCP
//! connection, an HTTP/1.1 `GET` answered 200 to 399, or a gRPC Health Checking protocol
//! `Check` (over HTTP/2 without TLS) answered `SERVING`, made inside the instance's network
//! namespace and bounded by the probe's `timeoutSeconds`.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use skiff_model::{ProbeAction, ProbeSettings};
use std::fs::File;
use std::sync::Arc;

/// Runs one attempt of `probe` against the instance whose network namespace is `netns`.
/// `Err` says what went wrong, for the instance's log and the revision's status: `connection
/// refused`, `answered 503 Service Unavailable`, `no answer within 1s`.
pub async fn attempt(netns: Arc<File>, probe: &ProbeSettings) -> Result<(), String> {
    let once = async {
        let stream = skiff_runtime::netns::connect(netns, probe.port)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => e.to_string(),
            })?;
        let (path, headers) = match &probe.action {
            ProbeAction::Tcp => return Ok(()),
            ProbeAction::Grpc { service } => return grpc_check(stream, service).await,
            ProbeAction::Http { path, headers } => (path, headers),
        };
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::get(path.as_str())
            .header(http::header::HOST, format!("localhost:{}", probe.port))
            .header(http::header::USER_AGENT, "Skiff-Health-Check");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot make the request: {e}"))?;
        let res = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(probe.timeout, once).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", probe.timeout.as_secs())),
    }
}

/// `grpc.health.v1.Health/Check` for `service` over `stream` (HTTP/2 with prior knowledge,
/// as gRPC without TLS is spoken); `Ok` only for `SERVING`.
async fn grpc_check(stream: tokio::net::TcpStream, service: &str) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    // The connection is already made inside the instance's namespace; tonic's channel takes
    // it through a connector that hands it over once.
    let stream = std::sync::Mutex::new(Some(stream));
    let connector = tower::service_fn(move |_: http::Uri| {
        let s = stream.lock().ok().and_then(|mut s| s.take());
        async move {
            s.map(TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the probe's connection was used already"))
        }
    });
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(connector)
        .await
        .map_err(|e| error_chain(&e))?;
    let res = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| match s.message() {
            "" => format!("answered {:?}", s.code()),
            m => format!("answered {:?}: {m}", s.code()),
        })?;
    match ServingStatus::try_from(res.get_ref().status) {
        Ok(ServingStatus::Serving) => Ok(()),
        Ok(other) => Err(format!("answered {}", other.as_str_name())),
        Err(_) => Err(format!("answered status {}", res.get_ref().status)),
    }
}

/// An error with its sources, for a probe's reason (tonic's transport error alone says only
/// `transport error`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
