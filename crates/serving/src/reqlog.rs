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
    /// What `req` (arrived for `host` from the client address `remote`, over HTTPS when
    /// `https`) looks like before it is rewritten for the instance.
    pub(crate) fn new<B>(req: &Request<B>, host: &str, remote: &str, https: bool) -> RequestLog {
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
            request_url: {
                let scheme = if https { "https://" } else { "http://" };
                let mut url = String::with_capacity(scheme.len() + host.len() + path.len());
                url.push_str(scheme);
                url.push_str(host);
                url.push_str(path);
                url
            },
            request_size: h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            user_agent: text(header::USER_AGENT),
            remote_ip: remote.to_string(),
            protocol: protocol(req.version()).to_string(),
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
        r.latency = latency_text(latency);
        r.response_size = Some(response_size.to_string());
        pool.log_request(instance, r);
    }
}

/// Cloud Logging's `httpRequest.latency`, a `Duration` in JSON: seconds with six decimals and
/// an `s` (`0.000734s`), written without `format!`'s machinery (it is on every request's path).
fn latency_text(latency: Duration) -> String {
    let mut s = String::with_capacity(24);
    s.push_str(itoa::Buffer::new().format(latency.as_secs()));
    s.push('.');
    skiff_runtime::logs::push_micros(&mut s, latency.subsec_micros());
    s.push('s');
    s
}

/// The protocol as Cloud Logging's `httpRequest.protocol` gives it (`HTTP/1.1`, `HTTP/2.0`):
/// the `http` crate's own names for its versions, without formatting each time.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_is_seconds_with_six_decimals() {
        use std::time::Duration;
        for (d, want) in [
            (Duration::from_micros(734), "0.000734s"),
            (Duration::from_micros(1_500_000), "1.500000s"),
            (Duration::from_nanos(12_345_678_999), "12.345678s"),
            (Duration::ZERO, "0.000000s"),
        ] {
            assert_eq!(super::latency_text(d), want);
            assert_eq!(
                want,
                format!("{}.{:06}s", d.as_secs(), d.subsec_micros()),
                "the format it replaces"
            );
        }
    }

    #[test]
    fn protocol_names_are_the_http_crates() {
        for v in [
            http::Version::HTTP_09,
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            assert_eq!(super::protocol(v), format!("{v:?}"));
        }
    }
}
