//! The ingress listeners, HTTP ([`serve_ingress`]) and HTTPS ([`serve_ingress_tls`]): they accept
//! connections, hold each to the limits an internet-facing server needs ([`IngressLimits`]:
//! header read timeout, which counts the TLS handshake, header size, connections per client
//! address, backing off when the process is out of file descriptors) and hand their requests
//! to the same proxy ([`crate::proxy`]), so that requests over TLS are routed, limited,
//! counted and logged exactly as plain ones.

use crate::{proxy, Serving};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the ingress allows one client.
#[derive(Clone, Debug)]
pub struct IngressLimits {
    /// How long a client has to send a request's head (request line and headers), counted
    /// from the connection's accept for its first request and from the end of the previous
    /// response for the next: past it the connection is closed. So it is also how long an
    /// idle HTTP/1.1 keep-alive connection is kept. An HTTP/2 connection must have sent its
    /// first request within it. nginx's `client_header_timeout` is 60 s; Skiff's default is
    /// 10 s ([`IngressLimits::default`]).
    pub header_read_timeout: Duration,
    /// How long a connection may go with no request in flight (none being handled, no
    /// response body still streaming) before it is closed gracefully (HTTP/2: a GOAWAY).
    /// HTTP/1.1 connections are closed sooner, by the header read timeout. Default 75 s,
    /// nginx's `keepalive_timeout`.
    pub idle_timeout: Duration,
    /// The largest request head in bytes (request line and headers for HTTP/1.1, the
    /// decoded header list for HTTP/2); a larger one is answered `431 Request Header Fields
    /// Too Large`. Default 64 KiB, the request header limit of Google's front ends.
    pub max_header_bytes: usize,
    /// The most connections one client address may hold open at once; the connections past
    /// it are closed as soon as they are accepted. `0`: no limit. Default 256.
    pub max_connections_per_client: usize,
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_header_bytes: 64 * 1024,
            max_connections_per_client: 256,
        }
    }
}

/// How long the listener pauses when accept() fails for want of file descriptors or memory
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM): the connection waits in the kernel's backlog meanwhile,
/// and the loop neither spins nor exits.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// HTTP/2 pings an idle connection's peer this often, and closes the connection when a ping
/// is not answered within [`H2_PING_TIMEOUT`]: a peer that went away does not hold it forever.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Open connections per client address, across the HTTP and HTTPS listeners (one table, held
/// by [`Serving`]).
#[derive(Default)]
pub(crate) struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; dropping it gives its place back.
struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// A place for one more connection from `ip`, or `None` when it already has `max`.
    fn take(table: &Arc<PerClient>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut t = table.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = t.entry(ip).or_default();
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// A connection one worker accepted for another: the stream (out of the accepting runtime's
/// reactor), its peer and its client slot.
type HandedOff = (std::net::TcpStream, std::net::SocketAddr, ClientSlot);

/// The ingress workers' open connections, and a way to hand each worker a connection.
///
/// Every worker accepts from the same listening socket, so which one takes a connection is a
/// race: one that wakes first may take a whole burst (a client opening 32 connections at once
/// got them all on one worker, leaving the other idle). A worker that accepts a connection
/// while it serves more than the least busy worker hands it over, so open connections stay
/// within one of each other across workers (least connections; nginx spreads them with
/// `reuseport` instead, by a hash of the addresses, which is even only on average).
struct Balance {
    open: Vec<std::sync::atomic::AtomicUsize>,
    to: Vec<tokio::sync::mpsc::UnboundedSender<HandedOff>>,
}

impl Balance {
    /// The worker that should serve a connection `me` accepted: `me`, unless another serves
    /// fewer. Counts the connection as that worker's.
    fn pick(&self, me: usize) -> usize {
        let least = (0..self.open.len())
            .min_by_key(|&w| (self.open[w].load(Ordering::Relaxed), w != me))
            .unwrap_or(me);
        self.open[least].fetch_add(1, Ordering::Relaxed);
        least
    }
}

/// One open connection of worker `.1`, counted until it is dropped.
struct Counted(Arc<Balance>, usize);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether an accept() error means the process or the system is out of descriptors or
/// memory, when accepting again at once would fail the same way.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Runs the HTTP ingress (HTTP/1.1 with keep-alive, and HTTP/2 over cleartext with prior
/// knowledge, told apart by the connection's first bytes) within `limits` until `shutdown`
/// resolves, then lets in-flight requests finish (up to `drain`).
pub async fn serve_ingress(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    limits: IngressLimits,
) {
    serve(serving, listener, None, shutdown, drain, limits, None).await
}

static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// How many ingress workers [`serve_ingress_workers`] runs: the number [`set_ingress_workers`]
/// gave, else one per core the process may use, as nginx's `worker_processes auto`.
pub fn ingress_workers() -> usize {
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets [`ingress_workers`] (`--ingress-workers`); 0 serves the ingress on the caller's
/// runtime instead. Must come before the first [`Serving`] is made (each instance's
/// connections are kept per worker); false if the number was already fixed.
pub fn set_ingress_workers(n: usize) -> bool {
    WORKERS.set(n).is_ok()
}

/// Runs the HTTP ingress as [`serve_ingress`] does, or with `tls` the HTTPS one as
/// [`serve_ingress_tls`] does, on [`ingress_workers`] threads (none: on the caller's runtime),
/// each with a single-threaded runtime of its own that accepts from `listener` and serves the
/// connections it accepted, with connections of its own to the instances: a request is read,
/// proxied and answered on one thread, without the work-stealing pool's hand-offs and
/// wake-ups between threads (nginx's model: one worker per core). What outlives a request
/// (an instance's start and supervision) runs on the server's main runtime
/// ([`crate::pool::Ctx::runtime`]). The workers stop accepting once `stop` is true, then let
/// in-flight requests finish (up to `drain`); the future returned resolves when every worker
/// has.
///
/// Errors, before any worker runs: the listener could not be shared with the workers
/// (`dup`), or a thread or its runtime could not be made.
pub fn serve_ingress_workers(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Duration,
    limits: IngressLimits,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    if ingress_workers() == 0 {
        let shutdown = async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        };
        return Ok(futures::future::Either::Left(serve(
            serving, listener, tls, shutdown, drain, limits, None,
        )));
    }
    let listener = listener.into_std()?;
    let (to, mut from): (Vec<_>, Vec<_>) = (0..ingress_workers())
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let balance = Arc::new(Balance {
        open: (0..ingress_workers()).map(|_| Default::default()).collect(),
        to,
    });
    let mut ended = Vec::new();
    for n in 1..=ingress_workers() {
        let listener = listener.try_clone()?;
        let spread = Spread {
            me: n - 1,
            balance: balance.clone(),
            handed: from.remove(0),
        };
        let (serving, limits, mut stop) = (serving.clone(), limits.clone(), stop.clone());
        let tls = tls.clone();
        // HTTPS workers keep their instance connections in the slots after the HTTP ones'.
        let (name, slot) = match tls {
            None => ("skiff-ingress", n),
            Some(_) => ("skiff-https", ingress_workers() + n),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, end) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("{name}-{n}"))
            .spawn(move || {
                crate::upstream::set_slot(slot);
                rt.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let shutdown = async move {
                                let _ = stop.wait_for(|s| *s).await;
                            };
                            serve(
                                serving,
                                listener,
                                tls,
                                shutdown,
                                drain,
                                limits,
                                Some(spread),
                            )
                            .await
                        }
                        Err(e) => tracing::error!("ingress worker {n}: {e}"),
                    }
                });
                // Its connections and their tasks end with the runtime, before it says so.
                drop(rt);
                drop(done);
            })?;
        ended.push(end);
    }
    Ok(futures::future::Either::Right(async move {
        for end in ended {
            let _ = end.await;
        }
    }))
}

/// Runs the HTTPS ingress: TLS 1.2/1.3 with `tls` (see [`skiff_tls::server_config`]: the
/// certificate by SNI, ALPN `h2` or `http/1.1`), then the same HTTP service as
/// [`serve_ingress`], within the same `limits` (the handshake counts in the header read
/// timeout). A connection that negotiated ALPN `acme-tls/1` (an ACME TLS-ALPN-01 validation,
/// RFC 8737 §3) is closed right after its handshake.
pub async fn serve_ingress_tls(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    limits: IngressLimits,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve(
        serving,
        listener,
        Some(acceptor),
        shutdown,
        drain,
        limits,
        None,
    )
    .await
}

/// A worker's part in spreading connections: which worker it is, the workers' counts and
/// hand-off channels, and the connections handed to it.
struct Spread {
    me: usize,
    balance: Arc<Balance>,
    handed: tokio::sync::mpsc::UnboundedReceiver<HandedOff>,
}

/// Accepts from `listener` (and, for an ingress worker, takes the connections `spread` hands
/// it) and serves each connection until `shutdown`, then drains.
async fn serve(
    serving: Arc<Serving>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
    limits: IngressLimits,
    mut spread: Option<Spread>,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper answers a head that fills its read buffer with 431.
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builder = Arc::new(builder);
    let per_client = serving.clients.clone();
    // Shutdown is told to every connection through `stop`; each connection holds a clone of
    // `live`, so `done` ends once they all have. (hyper-util's `GracefulShutdown` does not
    // take connections that can switch protocols.)
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (live, mut done) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    let mut warned = false;
    loop {
        let handed = async {
            match spread.as_mut() {
                Some(sp) => sp.handed.recv().await,
                None => std::future::pending().await,
            }
        };
        let (stream, peer, slot) = tokio::select! {
            Some((stream, peer, slot)) = handed => match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => (stream, peer, Some(slot)),
                Err(e) => {
                    tracing::debug!("ingress: a connection handed over: {e}");
                    if let Some(sp) = &spread {
                        // It was counted as this worker's when it was handed over.
                        sp.balance.open[sp.me].fetch_sub(1, Ordering::Relaxed);
                    }
                    continue;
                }
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    warned = false;
                    (stream, peer, None)
                }
                Err(e) if out_of_resources(&e) => {
                    if !warned {
                        tracing::warn!("ingress: cannot accept connections: {e}; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = &mut shutdown => break,
                    }
                }
                Err(e) => {
                    tracing::debug!("ingress: accept: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let handed_over = slot.is_some();
        let Some(slot) = slot
            .or_else(|| PerClient::take(&per_client, peer.ip(), limits.max_connections_per_client))
        else {
            tracing::debug!("ingress: {peer} is past its connection limit; closed");
            drop(stream);
            continue;
        };
        let counted = match &spread {
            None => None,
            Some(sp) => {
                let to = if handed_over {
                    sp.me
                } else {
                    sp.balance.pick(sp.me)
                };
                if to != sp.me {
                    // Out of this runtime's reactor, into the other worker's.
                    match stream.into_std() {
                        Ok(stream) => {
                            if sp.balance.to[to].send((stream, peer, slot)).is_err() {
                                sp.balance.open[to].fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            sp.balance.open[to].fetch_sub(1, Ordering::Relaxed);
                            tracing::debug!("ingress: handing {peer} over: {e}");
                        }
                    }
                    continue;
                }
                Some(Counted(sp.balance.clone(), sp.me))
            }
        };
        let _ = stream.set_nodelay(true);
        let serving = serving.clone();
        let internal = match (&serving.ctx.network, stream.local_addr()) {
            (Some(net), Ok(local)) => net.from_instance(local.ip(), peer.ip()),
            _ => false,
        };
        let peer = Arc::new(proxy::Peer::new(peer, internal, tls.is_some()));
        let peer_addr = peer.addr;
        // Set by the first request: until then the connection is on the header read clock,
        // also while hyper is still telling HTTP/1.1 from HTTP/2 by the first bytes.
        let asked = Arc::new(AtomicBool::new(false));
        let activity = Arc::new(Activity::default());
        let svc = {
            let (asked, activity) = (asked.clone(), activity.clone());
            hyper::service::service_fn(move |req| {
                asked.store(true, Ordering::Relaxed);
                let busy = Activity::begin(&activity);
                let (serving, peer) = (serving.clone(), peer.clone());
                async move {
                    let res = serving.handle(req, &peer).await;
                    // In flight until the response body has been sent (or dropped).
                    let res = res.map(|b| {
                        http_body_util::BodyExt::boxed(Guarded {
                            inner: b,
                            _busy: busy,
                        })
                    });
                    Ok::<_, std::convert::Infallible>(res)
                }
            })
        };
        let conn = Conn {
            builder: builder.clone(),
            stopping: stopping.clone(),
            first_deadline: tokio::time::Instant::now() + limits.header_read_timeout,
            asked,
            activity,
            idle_timeout: limits.idle_timeout,
        };
        let live = live.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let (_slot, _counted) = (slot, counted);
            match tls {
                None => conn.serve(stream, svc).await,
                Some(acceptor) => {
                    let mut stopping = conn.stopping.clone();
                    let handshake =
                        tokio::time::timeout_at(conn.first_deadline, acceptor.accept(stream));
                    let stream = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("ingress: TLS handshake with {peer_addr}: {e}");
                                return drop(live);
                            }
                            Err(_) => return drop(live),
                        },
                        _ = stopping.wait_for(|s| *s) => return drop(live),
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(skiff_tls::ACME_TLS_ALPN) {
                        // The validation needed only the handshake (RFC 8737 §3).
                        let mut stream = stream;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::io::AsyncWriteExt::shutdown(&mut stream),
                        )
                        .await;
                        return drop(live);
                    }
                    conn.serve(stream, svc).await
                }
            }
            drop(live);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(live);
    let _ = tokio::time::timeout(drain, done.recv()).await;
}

/// What serving one accepted connection needs, whatever its transport.
struct Conn {
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    /// When the first request's head must have arrived (the accept plus the header read
    /// timeout; a TLS handshake spends from it too).
    first_deadline: tokio::time::Instant,
    /// Set by the first request.
    asked: Arc<AtomicBool>,
    /// Requests in flight and when the last one ended.
    activity: Arc<Activity>,
    /// See [`IngressLimits::idle_timeout`].
    idle_timeout: Duration,
}

/// A connection's requests in flight, and when it last had none.
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `EPOCH` at which the count last fell to zero.
    idle_since_ms: std::sync::atomic::AtomicU64,
}

/// A request in flight; dropped when its response body is done.
struct Busy(Arc<Activity>);

static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Activity {
    fn begin(a: &Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(a.clone())
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.idle_since_ms.load(Ordering::SeqCst)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Guarded {
    inner: proxy::ProxyBody,
    _busy: Busy,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = proxy::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Conn {
    /// Serves HTTP/1.1 or HTTP/2 (told apart by the first bytes; over TLS the client sends the
    /// HTTP/2 preface after negotiating `h2`) on `io` until the connection ends, the client
    /// misses the first request's deadline, or shutdown has drained it.
    async fn serve<I, S>(mut self, io: I, svc: S)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<proxy::ProxyBody>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let first = tokio::time::sleep_until(self.first_deadline);
        tokio::pin!(first);
        let mut watching = true;
        self.activity
            .idle_since_ms
            .store(now_ms(), Ordering::SeqCst);
        let check = (self.idle_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = self.stopping.wait_for(|s| *s) => {
                    conn.as_mut().graceful_shutdown();
                    break;
                }
                _ = tokio::time::sleep(check) => {
                    if self.activity.idle_for() >= self.idle_timeout {
                        conn.as_mut().graceful_shutdown();
                        break;
                    }
                }
                _ = first.as_mut(), if watching => {
                    if !self.asked.load(Ordering::Relaxed) {
                        // Dropping the connection closes the socket.
                        return;
                    }
                    watching = false;
                }
            }
        }
        let _ = conn.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_connections_go_to_the_worker_with_fewest() {
        let (to, _from): (Vec<_>, Vec<_>) = (0..3)
            .map(|_| tokio::sync::mpsc::unbounded_channel::<HandedOff>())
            .unzip();
        let b = Arc::new(Balance {
            open: (0..3).map(|_| Default::default()).collect(),
            to,
        });
        let open = |b: &Balance| -> Vec<usize> {
            b.open.iter().map(|n| n.load(Ordering::Relaxed)).collect()
        };
        // A burst accepted by worker 0 alone is spread over all three, the acceptor first on
        // a tie.
        let picked: Vec<usize> = (0..7).map(|_| b.pick(0)).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(open(&b), [3, 2, 2]);
        // Connections that end are counted out, and the next goes where there are fewest.
        let ended: Vec<Counted> = (0..2).map(|_| Counted(b.clone(), 0)).collect();
        drop(ended);
        assert_eq!(open(&b), [1, 2, 2]);
        assert_eq!(b.pick(2), 0);
        assert_eq!(b.pick(2), 2);
        assert_eq!(open(&b), [2, 2, 3]);
    }

    #[test]
    fn per_client_places_are_counted_and_given_back() {
        let table = Arc::new(PerClient::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = PerClient::take(&table, a, 2).unwrap();
        let two = PerClient::take(&table, a, 2).unwrap();
        assert!(PerClient::take(&table, a, 2).is_none());
        assert!(PerClient::take(&table, b, 2).is_some());
        drop(one);
        let three = PerClient::take(&table, a, 2).unwrap();
        drop((two, three));
        assert!(table.0.lock().unwrap().get(&a).is_none());
        // 0: no limit.
        let many: Vec<_> = (0..10)
            .map(|_| PerClient::take(&table, a, 0).unwrap())
            .collect();
        assert_eq!(many.len(), 10);
    }
}
