//! One attempt of a container's startup or liveness probe (Cloud Run's health checks): a TCP
//! connection, or an HTTP/1.1 `GET` answered 200 to 399, made inside the instance's network
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
        let ProbeAction::Http { path, headers } = &probe.action else {
            return Ok(());
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
