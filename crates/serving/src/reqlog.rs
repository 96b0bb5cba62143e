//! Request logs: one entry per request that reached a revision, as Cloud Run writes them
//! (`run.googleapis.com/requests`, with `httpRequest`). What the request looked like is taken
//! when it arrives; status, latency and response size when its response body is over (or the
//! platform answered itself). The entry goes to the log sink without waiting
//! ([`skiff_runtime::logs::LogSink::push_request`]), so the request path never waits on the
//! disk.

use crate::pool::Pool;
use http::{header, Request};
use skiff_runtime::logs::HttpRequest;
use std::time::Duration;

/// A request's entry, waiting for its outcome.
#[derive(Debug, Clone)]
pub(crate) struct RequestLog(HttpRequest);

impl RequestLog {
    /// What `req` (arrived for `host` from `remote`, over HTTPS when `https`) looks like before
    /// it is rewritten for the instance.
    pub(crate) fn new<B>(
        req: &Request<B>,
        host: &str,
        remote: std::net::IpAddr,
        https: bool,
    ) -> RequestLog {
        let h = req.headers();
        let text = |name: header::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        RequestLog(HttpRequest {
            request_method: req.method().to_string(),
            request_url: format!("{}://{host}{path}", if https { "https" } else { "http" }),
            request_size: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            user_agent: text(header::USER_AGENT),
            remote_ip: remote.to_string(),
            protocol: format!("{:?}", req.version()),
            ..HttpRequest::default()
        })
    }

    /// Writes the entry: `status`, `latency`, `response_size` bytes, from `instance` (none
    /// when the platform answered itself).
    pub(crate) fn finish(
        self,
        pool: &Pool,
        instance: Option<&str>,
        status: u16,
        latency: Duration,
        response_size: u64,
    ) {
        let mut r = self.0;
        r.status = status;
        r.latency = format!("{:.6}s", latency.as_secs_f64());
        r.response_size = Some(response_size.to_string());
        pool.log_request(instance, r);
    }
}
