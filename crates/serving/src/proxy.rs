//! The ingress request path: Host header → service route → (tag or weighted revision) →
//! identity check → a lease on an instance → the request streamed to the app over a pooled
//! keep-alive connection inside the instance's network namespace → the response streamed back.
//!
//! Nothing here touches the store or the API: routes are in memory, swapped atomically by the
//! control plane.

use crate::auth::Verdict;
use crate::pool::{AcquireError, Lease};
use crate::reqlog::RequestLog;
use crate::Serving;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// How long a request may wait for a free slot once the revision is at max-instances.
pub const QUEUE_LIMIT: Duration = Duration::from_secs(10);

/// Whether `name` is a hop-by-hop header (RFC 9110 §7.6.1, and the non-standard ones proxies
/// still see). A match on the name's text: for the standard names it is a static string, so
/// this costs a few comparisons of lengths and bytes, without hashing.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// The client end of an ingress connection, worked out once per connection.
pub struct Peer {
    pub addr: SocketAddr,
    /// Its IP as an `X-Forwarded-For` value.
    pub ip: HeaderValue,
    /// Its `Forwarded` element (RFC 7239 §4): `for=IP;proto=http` (or `https`), an IPv6
    /// address quoted and bracketed (§6).
    pub forwarded: HeaderValue,
    /// The connection came through the HTTPS listener (TLS).
    pub https: bool,
    /// The connection came from one of Skiff's own instances or job tasks: from an address
    /// in the instance subnet to the bridge's gateway address. Only such requests reach a
    /// service whose ingress setting is internal.
    pub internal: bool,
}

impl Peer {
    /// The peer at `addr`; `internal` when it is one of Skiff's instances or job tasks, `https`
    /// when it connected through TLS.
    pub fn new(addr: SocketAddr, internal: bool, https: bool) -> Peer {
        let ip = addr.ip();
        Peer {
            addr,
            ip: HeaderValue::from_str(&ip.to_string())
                .expect("an IP address is a valid header value"),
            forwarded: forwarded_element(ip, if https { "https" } else { "http" }),
            internal,
            https,
        }
    }
}

/// `for=IP;proto=PROTO` (RFC 7239 §4, an IPv6 address quoted and bracketed, §6).
fn forwarded_element(ip: std::net::IpAddr, proto: &str) -> HeaderValue {
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    HeaderValue::from_str(&format!("for={node};proto={proto}"))
        .expect("a forwarded element is a valid header value")
}

/// Whether a plain-HTTP request says it was HTTPS before a proxy on this machine passed it
/// on (`X-Forwarded-Proto: https` from a loopback peer: Skiff's own Pub/Sub pushes and
/// scheduler calls to `https://` service URLs, or a TLS-terminating proxy in front of Skiff).
/// Such a request is not redirected and the app is told `https`. From any other peer the
/// header is not believed.
fn forwarded_https(req: &Request<Incoming>, peer: &Peer) -> bool {
    peer.addr.ip().is_loopback()
        && req
            .headers()
            .get(X_FORWARDED_PROTO)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// `308 Permanent Redirect` to `https://HOST[:PORT]TARGET` (the port left out when 443),
/// keeping the method and body (RFC 9110 §15.4.9).
fn redirect_to_https(host: &str, port: u16, uri: &Uri) -> Response<ProxyBody> {
    let name = skiff_tls::normalize_host(host);
    let target = match uri.path_and_query().map(|p| p.as_str()) {
        Some(pq) if pq.starts_with('/') => pq,
        _ => "/",
    };
    let location = match port {
        443 => format!("https://{name}{target}"),
        p => format!("https://{name}:{p}{target}"),
    };
    let body = format!("308 Permanent Redirect: {location}\n");
    let mut res = Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Ok(v) = HeaderValue::from_str(&location) {
        res = res.header(header::LOCATION, v);
    }
    res.body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("redirect response is valid")
}

pub fn platform_response(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {msg}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("static response is valid")
}

/// The request target the app gets (RFC 9112 §3.2): an origin-form target as the client sent
/// it, byte for byte (`//a/./b?` stays `//a/./b?`: nothing is normalised or decoded);
/// the asterisk form (`OPTIONS *`) as is; an absolute-form target's path and query, `/` when
/// it has no path.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    if pq.starts_with('/') {
        return Uri::from(uri.path_and_query().cloned().expect("non-empty"));
    }
    Uri::try_from(format!("/{pq}")).unwrap_or_else(|_| Uri::from_static("/"))
}

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages carry none, or only `Connection: keep-alive`.
    if !headers.keys().any(|k| is_hop_by_hop(k.as_str())) {
        return;
    }
    // The names a `Connection` header lists go too (RFC 9110 §7.6.1); `keep-alive` and
    // `close`, the common ones, need no parse.
    let mut listed: Vec<http::HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        for token in v.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            if let Ok(name) = http::HeaderName::from_bytes(token.as_bytes()) {
                if !is_hop_by_hop(name.as_str()) {
                    listed.push(name);
                }
            }
        }
    }
    // Only the names present are removed (a removal hashes its name).
    let present: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str()))
        .cloned()
        .collect();
    for h in present.into_iter().chain(listed) {
        headers.remove(h);
    }
}

/// Joins an HTTP/2 request's `Cookie` fields into one for HTTP/1.1, with `; ` between them
/// (RFC 9113 §8.2.3: HTTP/2 clients may send each cookie as a field of its own, and an
/// HTTP/1.1 request carries one `Cookie` header, RFC 6265 §5.4).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

impl Serving {
    /// Serves one ingress request.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ProxyBody> {
        let began = Instant::now();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or_default()
            .to_string();
        let https = peer.https || forwarded_https(&req, peer);
        if !https {
            // ACME HTTP-01 validations come over plain HTTP, for any host (RFC 8555 §8.3).
            if let Some(answer) = self.https.http01.answer(req.uri().path()) {
                return Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(
                        Full::new(Bytes::from(answer))
                            .map_err(|e| match e {})
                            .boxed(),
                    )
                    .expect("challenge response is valid");
            }
            // Once the host has a certificate, plain HTTP moves to HTTPS; Skiff's own
            // instances keep plain HTTP (they reach the ingress on the bridge's HTTP port).
            if let Some(port) = self.https.port {
                if !peer.internal && self.https.certs.covers(&host) {
                    return redirect_to_https(&host, port, req.uri());
                }
            }
        }
        // A mapped custom domain first (`skiff domain-mappings`), then a service's own names.
        let custom = self.mapped_domain(&host);
        let readings = match &custom {
            Some((_, ns, svc)) => vec![(ns.clone(), svc.clone(), None)],
            None => self.urls.parse(&host),
        };
        let mut readings = readings.into_iter();
        let Some(first) = readings.next() else {
            return platform_response(
                StatusCode::NOT_FOUND,
                &format!("no service answers at host {host:?}"),
            );
        };
        // Each reading is looked up by its own key, without copies; the first one's names
        // answer when none names a service.
        let found = {
            let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
            let look = |(ns, service, tag): (String, String, Option<String>)| {
                let key = (ns, service);
                match routes.get(&key) {
                    Some(r) => Ok((key.0, key.1, tag, r.clone())),
                    None => Err(key),
                }
            };
            look(first).or_else(|first| readings.find_map(|r| look(r).ok()).ok_or(first))
        };
        let (ns, service, tag, route) = match found {
            Ok(f) => f,
            Err((ns, service)) => {
                return platform_response(
                    StatusCode::NOT_FOUND,
                    &format!("service {service} not found in project {ns}"),
                )
            }
        };
        if route.internal && !peer.internal {
            // Cloud Run answers 404 to a request from outside for an internal service.
            return platform_response(
                StatusCode::NOT_FOUND,
                &format!(
                    "service {service} only answers requests from Skiff's instances and jobs (its ingress is internal)"
                ),
            );
        }
        if !route.public {
            let mut hosts = self.urls.hosts(&ns, &service, tag.as_deref());
            let auth = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if let Some((domain, _, _)) = &custom {
                hosts.push(domain.clone());
            }
            match self.keys.verify(auth, &hosts, &route.invokers) {
                Verdict::Allowed => {}
                Verdict::Missing => {
                    return platform_response(
                        StatusCode::UNAUTHORIZED,
                        "this service is private: send Authorization: Bearer $(skiff auth print-identity-token)",
                    )
                }
                Verdict::Denied(why) => return platform_response(StatusCode::FORBIDDEN, &why),
            }
        }
        let pool = match &tag {
            Some(t) => match route.tags.get(t) {
                Some(p) => p.clone(),
                None => {
                    return platform_response(
                        StatusCode::NOT_FOUND,
                        &format!("service {service} has no tag {t}"),
                    )
                }
            },
            None => match route.pick() {
                Some(p) => p,
                None => {
                    return platform_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("service {service} has no ready revision to serve"),
                    )
                }
            },
        };
        let deadline = began + pool.settings.timeout;
        let log = RequestLog::new(&req, &host, peer.ip.to_str().unwrap_or_default(), https);
        // The platform's own answer to a request that reached the revision, counted in its
        // metrics and logged.
        let answer = |status: StatusCode, msg: &str| {
            pool.metrics.request(status.as_u16(), began.elapsed());
            let res = platform_response(status, msg);
            let size = res.body().size_hint().exact().unwrap_or(0);
            log.clone()
                .finish(&pool, None, status.as_u16(), began.elapsed(), size);
            res
        };
        let lease =
            match pool.acquire(deadline, QUEUE_LIMIT).await {
                Ok(l) => l,
                Err(AcquireError::StartFailed(why)) => {
                    return answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("no instance could be started: {why}"),
                    )
                }
                Err(AcquireError::Closed) => {
                    return answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the revision is shutting down",
                    )
                }
                Err(AcquireError::Timeout) => {
                    return answer(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the request timed out waiting for an instance",
                    )
                }
                Err(AcquireError::Overloaded) => return answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    "every instance is busy at max-instances; retry later or raise --max-instances",
                ),
            };
        lease.count_request();
        // Origin-form to the app; an HTTP/2 request's authority becomes its Host.
        if !req.headers().contains_key(header::HOST) {
            if let Some(v) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        *req.uri_mut() = origin_form(req.uri());
        // A protocol switch (WebSocket) asked over HTTP/1.1: its Upgrade is kept for the app,
        // and the client's side of the tunnel taken before the request goes on.
        let upgrade = match req.version() {
            http::Version::HTTP_11 => upgrade_protocol(req.headers()),
            _ => None,
        };
        let client_upgrade = match pool.settings.use_http2 {
            false => upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req)),
            true => None,
        };
        // `TE: trailers` (gRPC sends it) is the one TE an HTTP/2 hop keeps.
        let te_trailers = req
            .headers()
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let from_h2 = req.version() == http::Version::HTTP_2;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if from_h2 && !pool.settings.use_http2 {
            join_cookies(headers);
        }
        // Room for the headers added below (X-Forwarded-For, X-Forwarded-Proto, Forwarded, the
        // two trace headers, an Upgrade's two): the map grows once, not once per insert.
        headers.reserve(7);
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok(),
            None => Some(peer.ip.clone()),
        };
        if let Some(v) = xff {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        let element = match https == peer.https {
            true => peer.forwarded.clone(),
            false => forwarded_element(peer.addr.ip(), "https"),
        };
        let forwarded = match headers.get(header::FORWARDED) {
            Some(prev) => {
                let mut v = prev.as_bytes().to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(element.as_bytes());
                HeaderValue::from_bytes(&v).ok()
            }
            None => Some(element),
        };
        if let Some(v) = forwarded {
            headers.insert(header::FORWARDED, v);
        }
        crate::trace::propagate(headers);
        let port = pool.settings.port;
        let inst = &lease.inst;
        let connect = || {
            let netns = self
                .ctx
                .netns
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&inst.id)
                .cloned();
            async move {
                let netns = netns.ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "the instance is gone")
                })?;
                skiff_runtime::netns::connect(netns, port).await
            }
        };
        let h2 = pool.settings.use_http2;
        if h2 {
            to_http2(&mut req, te_trailers);
        }
        let sent = async {
            match client_upgrade {
                Some(_) => inst.upstream.send_upgrade(req, connect).await,
                None if h2 => inst.upstream.send_h2(req, connect).await,
                None => inst.upstream.send(req, connect).await,
            }
        };
        let res = match tokio::time::timeout_at(deadline.into(), sent).await {
            Err(_) => {
                return answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "the request took longer than the {}s timeout",
                        pool.settings.timeout.as_secs()
                    ),
                )
            }
            Ok(Err(e)) => {
                tracing::debug!(instance = lease.inst.id, "upstream error: {e:?}");
                return answer(
                    StatusCode::BAD_GATEWAY,
                    "the instance closed the connection without a response",
                );
            }
            Ok(Ok(r)) => r,
        };
        if let Some(client) = client_upgrade {
            if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                return tunnel(res, client, lease, deadline, began);
            }
        }
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = LeaseBody {
            inner: body,
            lease: Some(lease),
            deadline,
            timer: None,
            status: parts.status.as_u16(),
            began,
            log: Some(log),
            sent: 0,
        };
        Response::from_parts(parts, body.boxed())
    }
}

/// Makes an origin-form request one for an HTTP/2 connection: absolute form (`http://HOST`
/// and the target as it came, byte for byte), the `Host` header moved to the authority.
fn to_http2(req: &mut Request<Incoming>, te_trailers: bool) {
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .or(Some(http::uri::PathAndQuery::from_static("/")));
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = http::Version::HTTP_2;
    if te_trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocol a request asks to switch to (its `Upgrade` header) when its `Connection`
/// header lists `upgrade` (RFC 9110 §7.8).
fn upgrade_protocol(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let proto = headers.get(header::UPGRADE)?;
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        .then(|| proto.clone())
}

/// The app switched protocols: the client gets its `101` (with its `Upgrade` and `Connection`
/// headers), and the two upgraded connections are joined byte for byte until either side
/// closes or the request timeout passes, as Cloud Run treats a WebSocket as one long request.
/// The lease, and so the instance's slot and its billing as a request in flight, is held as
/// long as the tunnel is open.
fn tunnel(
    mut res: Response<crate::upstream::UpstreamBody>,
    client: hyper::upgrade::OnUpgrade,
    lease: Lease,
    deadline: Instant,
    began: Instant,
) -> Response<ProxyBody> {
    let app = hyper::upgrade::on(&mut res);
    tokio::spawn(async move {
        let joined = async {
            let (client, app) = futures::future::join(client, app).await;
            let (mut client, mut app) = (
                hyper_util::rt::TokioIo::new(client?),
                hyper_util::rt::TokioIo::new(app?),
            );
            let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
            Ok::<_, hyper::Error>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout_at(deadline.into(), joined).await {
            tracing::debug!(instance = lease.inst.id, "upgrade failed: {e}");
        }
        lease.pool().metrics.request(101, began.elapsed());
        drop(lease);
    });
    let (parts, _) = res.into_parts();
    Response::from_parts(
        parts,
        http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
    )
}

/// The response body, holding the instance slot until the body ends (or the client goes
/// away) and cutting it off at the request's deadline. The request is counted in the
/// revision's metrics when the slot is let go.
struct LeaseBody {
    inner: crate::upstream::UpstreamBody,
    lease: Option<Lease>,
    deadline: Instant,
    /// Armed the first time the body has to wait: most bodies are complete at once and never
    /// need a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    status: u16,
    began: Instant,
    /// The request's log entry, written when the slot is let go.
    log: Option<RequestLog>,
    /// Response body bytes passed on so far.
    sent: u64,
}

impl LeaseBody {
    /// The exchange is over: the slot is freed and the request counted. (The body has
    /// already handed its connection back when it completed.)
    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            let latency = self.began.elapsed();
            lease.pool().metrics.request(self.status, latency);
            if let Some(log) = self.log.take() {
                log.finish(
                    lease.pool(),
                    Some(&lease.inst.id),
                    self.status,
                    latency,
                    self.sent,
                );
            }
        }
    }
}

impl Drop for LeaseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for LeaseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let cut = |this: &mut Self| {
            this.finish();
            Poll::Ready(Some(Err(BoxError::from(
                "the response took longer than the request timeout",
            ))))
        };
        if Instant::now() >= self.deadline {
            return cut(&mut self);
        }
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                if timer.as_mut().poll(cx).is_ready() {
                    return cut(&mut self);
                }
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.sent += d.len() as u64;
                }
            }
        }
        if self.inner.is_end_stream() {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("host", "app.localhost"),
            ("connection", "keep-alive, X-Custom"),
            ("connection", "Upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("x-kept", "2"),
        ] {
            h.append(http::HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "host", "x-kept"]);
        // A message with none is left as it is.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A response's `Connection: keep-alive` (or `close`, listing another name).
        for (connection, want) in [
            ("keep-alive", vec!["content-length", "x-other"]),
            ("Close, X-Other", vec!["content-length"]),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(header::CONNECTION, connection.parse().unwrap());
            h.insert(header::CONTENT_LENGTH, "17".parse().unwrap());
            h.insert("x-other", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            left.sort_unstable();
            assert_eq!(left, want, "{connection}");
        }
    }

    #[test]
    fn an_http2_requests_cookie_fields_become_one_header() {
        let mut h = http::HeaderMap::new();
        for v in ["a=1", "b=2", "c=3"] {
            h.append(header::COOKIE, v.parse().unwrap());
        }
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        join_cookies(&mut h);
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        assert_eq!(h[header::ACCEPT], "*/*");
        // One field, or none, is left as it is.
        let mut one = http::HeaderMap::new();
        one.insert(header::COOKIE, "a=1; b=2".parse().unwrap());
        let before = one.clone();
        join_cookies(&mut one);
        assert_eq!(one, before);
        let mut none = http::HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn redirects_keep_the_target_and_leave_out_port_443() {
        let location = |host: &str, port: u16, target: &str| {
            let uri: Uri = target.parse().unwrap();
            let res = redirect_to_https(host, port, &uri);
            assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
            res.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            location("Hello.Apps.Test:80", 443, "/a/b?c=d"),
            "https://hello.apps.test/a/b?c=d"
        );
        assert_eq!(
            location("hello.apps.test:8080", 8443, "/"),
            "https://hello.apps.test:8443/"
        );
        assert_eq!(location("h.test", 443, "*"), "https://h.test/");
        assert_eq!(
            location("h.test", 443, "http://h.test/x?y"),
            "https://h.test/x?y"
        );
    }

    #[test]
    fn forwarded_elements_name_the_scheme() {
        let v4 = Peer::new("192.0.2.1:5000".parse().unwrap(), false, true);
        assert_eq!(v4.forwarded, "for=192.0.2.1;proto=https");
        let v6 = Peer::new("[2001:db8::1]:5000".parse().unwrap(), false, false);
        assert_eq!(v6.forwarded, "for=\"[2001:db8::1]\";proto=http");
    }
}
