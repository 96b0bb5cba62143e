//! Connections from the ingress to one instance: HTTP/1.1 keep-alive connections, kept per
//! instance, each driven by the task of the request that uses it. A pooled client would give
//! every connection a task of its own, and every request two hand-offs between tasks (the
//! request to the connection's task, the response back); here the request's task writes the
//! request, reads the response head, and — from the response body — reads the rest.
//!
//! A request without a body (most of them: `GET`, `HEAD`, `DELETE`) goes over a connection
//! of [`crate::wire`], the HTTP/1.1 exchange written over the socket; a request with a body
//! over one of hyper's HTTP/1.1 client connections. The two kinds are kept apart.
//!
//! Each ingress worker (a thread with a runtime of its own, see
//! [`crate::ingress::serve_ingress_workers`]) keeps connections of its own to each instance,
//! opened and driven by its runtime only: a connection is registered with the reactor of the
//! runtime that opened it, and would otherwise be woken from another thread (and end with that
//! runtime while the other still used it). Threads that are no worker share slot 0.

use crate::wire::{Reader, Wire, WireError};
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

type Driver = http1::Connection<TokioIo<tokio::net::TcpStream>, Incoming>;

/// Most idle connections kept per instance.
const MAX_IDLE: usize = 1024;

thread_local! {
    /// The connections slot of this thread: 1 and up for the ingress workers (see [`set_slot`]),
    /// 0 for every other thread.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread use connections slot `n`: an HTTP ingress worker's number (1 to
/// [`crate::ingress::ingress_workers`]), or an HTTPS one's after them.
pub(crate) fn set_slot(n: usize) {
    SLOT.with(|s| s.set(n));
}

/// The calling thread's connections slot, within `0..slots`.
fn slot(slots: usize) -> usize {
    SLOT.with(Cell::get).min(slots - 1)
}

/// One connection to an instance.
pub struct Conn {
    tx: http1::SendRequest<Incoming>,
    /// The connection's I/O; `None` once it has ended.
    driver: Option<Pin<Box<Driver>>>,
    /// The slot of the thread that opened it, where it goes back when idle.
    slot: usize,
}

impl Conn {
    /// Does the connection's pending I/O; false once the connection is over.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(d) = &mut self.driver {
            if d.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
        self.driver.is_some()
    }

    /// Whether the connection can take another request now.
    fn usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && matches!(self.tx.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

/// One slot's connections to an instance.
#[derive(Default)]
struct Slot {
    idle: Mutex<Vec<Conn>>,
    /// Idle connections for requests without a body.
    wires: Mutex<Vec<Wire>>,
    /// The one HTTP/2 connection to an h2c container, shared by all of this slot's requests
    /// (each a stream of it), driven by a task of its own.
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Incoming>>>,
}

/// The connections to one instance: per slot, the idle HTTP/1.1 ones and the HTTP/2 one.
pub struct Upstream {
    slots: Box<[Slot]>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            slots: (0..=2 * crate::ingress::ingress_workers())
                .map(|_| Slot::default())
                .collect(),
        }
    }
}

impl Upstream {
    fn here(&self) -> (usize, &Slot) {
        let n = slot(self.slots.len());
        (n, &self.slots[n])
    }

    fn checkout(&self, cx: &mut Context<'_>) -> Option<Conn> {
        let (_, here) = self.here();
        loop {
            let mut c = here.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if c.usable(cx) {
                return Some(c);
            }
        }
    }

    /// Keeps a connection whose exchange is complete for the next request, if it can take one.
    /// Without a task to wake (the response body was dropped at its end), a no-op waker does:
    /// whoever takes the connection next polls it again with its own.
    pub fn release(&self, mut c: Conn, cx: Option<&mut Context<'_>>) {
        let usable = match cx {
            Some(cx) => c.usable(cx),
            None => c.usable(&mut Context::from_waker(std::task::Waker::noop())),
        };
        if usable {
            let slot = &self.slots[c.slot.min(self.slots.len() - 1)];
            let mut idle = slot.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(c);
            }
        }
    }

    /// How many idle connections are kept now, in every slot, of both kinds.
    pub fn idle_count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| {
                s.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
                    + s.wires.lock().unwrap_or_else(|e| e.into_inner()).len()
            })
            .sum()
    }

    /// An idle connection for a request without a body, from this thread's slot, that the
    /// app has not closed.
    fn checkout_wire(&self) -> Option<Wire> {
        let (_, here) = self.here();
        loop {
            let w = here.wires.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if w.usable() {
                return Some(w);
            }
        }
    }

    /// Keeps a connection for requests without a body in `slot`.
    fn release_wire(&self, w: Wire, slot: usize) {
        let slot = &self.slots[slot.min(self.slots.len() - 1)];
        let mut idle = slot.wires.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(w);
        }
    }

    /// Sends a request without a body over an idle connection of [`crate::wire`], or a new
    /// one that `connect` opens. An idle connection that failed before any answer came is
    /// replaced by a new one for a second try when the request could not have reached the
    /// app (its write failed) or is idempotent (RFC 9110 §9.2.2: the app may have read it
    /// before the connection went, and repeating it changes nothing more).
    async fn send_bodiless<F, Fut>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        connect: F,
    ) -> Result<Response<UpstreamBody>, crate::proxy::BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
    {
        let slot = self.here().0;
        let mut pooled = self.checkout_wire();
        loop {
            let reused = pooled.is_some();
            let wire = match pooled.take() {
                Some(w) => w,
                None => Wire::new(connect().await?),
            };
            match wire.exchange(&req).await {
                Ok((parts, reader)) => {
                    return Ok(Response::from_parts(
                        parts,
                        UpstreamBody {
                            kind: Kind::Wire { reader, slot },
                            upstream: self.clone(),
                        },
                    ))
                }
                Err(WireError::Write(_)) if reused => continue,
                Err(WireError::NoResponse(_)) if reused && idempotent(req.method()) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `req` over an idle connection, or a new one that `connect` opens: without a body,
    /// as [`Upstream::send_bodiless`] does; with one, over hyper's client. A request
    /// that an idle connection turned down unsent (the app closed it meanwhile) is sent again
    /// over a new connection. The response's body drives the connection from then on, and
    /// hands it back here when it is complete.
    pub async fn send<F, Fut>(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        connect: F,
    ) -> Result<Response<UpstreamBody>, crate::proxy::BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
    {
        if req.body().is_end_stream() {
            return self.send_bodiless(req, connect).await;
        }
        let pooled = std::future::poll_fn(|cx| Poll::Ready(self.checkout(cx))).await;
        let mut fresh = pooled.is_none();
        let slot = self.here().0;
        let mut conn = match pooled {
            Some(c) => c,
            None => open(&connect, slot).await?,
        };
        loop {
            let fut = conn.tx.try_send_request(req);
            let mut fut = std::pin::pin!(fut);
            let r = std::future::poll_fn(|cx| {
                conn.drive(cx);
                fut.as_mut().poll(cx)
            })
            .await;
            match r {
                Ok(res) => {
                    let upstream = self.clone();
                    return Ok(res.map(|inner| UpstreamBody {
                        kind: Kind::Hyper {
                            inner,
                            conn: Some(conn),
                        },
                        upstream,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        conn = open(&connect, slot).await?;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

impl Upstream {
    /// Sends `req` as a stream of the instance's HTTP/2 connection (prior knowledge, "h2c"),
    /// opening it with `connect` if there is none yet or it has ended. The request must be in
    /// absolute form (HTTP/2 carries the scheme and authority as pseudo-headers). Bodies stream
    /// both ways and trailers pass through, as gRPC needs.
    pub async fn send_h2<F, Fut>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        connect: F,
    ) -> Result<Response<UpstreamBody>, crate::proxy::BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
    {
        let mut tx = {
            let mut slot = self.here().1.h2.lock().await;
            match slot.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let stream = connect().await?;
                    let (tx, conn) = http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .handshake(TokioIo::new(stream))
                        .await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    *slot = Some(tx.clone());
                    tx
                }
            }
        };
        tx.ready().await?;
        let res = tx.send_request(req).await?;
        let upstream = self.clone();
        Ok(res.map(|inner| UpstreamBody {
            kind: Kind::Hyper { inner, conn: None },
            upstream,
        }))
    }

    /// Sends a request that asks to switch protocols (an HTTP/1.1 `Upgrade`, such as a
    /// WebSocket handshake) over a new connection of its own, never pooled: after a `101
    /// Switching Protocols` it becomes the tunnel (`hyper::upgrade::on` on the response);
    /// after any other answer it is closed with the response body.
    pub async fn send_upgrade<F, Fut>(
        self: &Arc<Self>,
        req: Request<Incoming>,
        connect: F,
    ) -> Result<Response<UpstreamBody>, crate::proxy::BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
    {
        let stream = connect().await?;
        let (mut tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let res = tx.send_request(req).await?;
        let upstream = self.clone();
        Ok(res.map(|inner| UpstreamBody {
            kind: Kind::Hyper { inner, conn: None },
            upstream,
        }))
    }
}

async fn open<F, Fut>(connect: &F, slot: usize) -> Result<Conn, crate::proxy::BoxError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
{
    let stream = connect().await?;
    let (tx, driver) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    Ok(Conn {
        tx,
        driver: Some(Box::pin(driver)),
        slot,
    })
}

/// Whether a request method is idempotent (RFC 9110 §9.2.2).
fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// A response body from an instance. Polling it drives its connection; once it is complete
/// the connection goes back to the instance's idle ones (dropped unfinished, it is closed).
pub struct UpstreamBody {
    kind: Kind,
    upstream: Arc<Upstream>,
}

/// Which kind of connection a body comes over.
enum Kind {
    /// hyper's client connection (a request with a body, an upgrade, HTTP/2).
    Hyper { inner: Incoming, conn: Option<Conn> },
    /// A [`crate::wire`] connection, going back to slot `slot` when the body is complete.
    Wire { reader: Reader, slot: usize },
}

impl UpstreamBody {
    /// Hands the connection back if the body is complete, else closes it.
    fn done(&mut self, cx: Option<&mut Context<'_>>) {
        match &mut self.kind {
            Kind::Hyper { inner, conn } => {
                if let Some(c) = conn.take() {
                    if inner.is_end_stream() {
                        self.upstream.release(c, cx);
                    }
                }
            }
            Kind::Wire { reader, slot } => {
                if let Some(w) = reader.reusable() {
                    self.upstream.release_wire(w, *slot);
                }
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.done(None);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Hyper { inner, conn } => {
                if let Some(c) = conn.as_mut() {
                    c.drive(cx);
                }
                let r = Pin::new(&mut *inner).poll_frame(cx);
                let end = inner.is_end_stream();
                match &r {
                    Poll::Ready(None) => self.done(Some(cx)),
                    Poll::Ready(Some(Err(_))) => *conn = None,
                    _ if end => self.done(Some(cx)),
                    _ => {}
                }
                r.map(|o| o.map(|f| f.map_err(Into::into)))
            }
            Kind::Wire { reader, .. } => {
                let r = reader.poll_frame(cx);
                if reader.is_end_stream() {
                    self.done(Some(cx));
                }
                r.map(|o| o.map(|f| f.map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
            Kind::Wire { reader, .. } => reader.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hyper { inner, .. } => inner.size_hint(),
            Kind::Wire { reader, .. } => match reader.exact_len() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves `handler`'s answers on loopback, HTTP/1.1 with keep-alive; counts connections.
    async fn backend(accepted: Arc<AtomicUsize>) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let n = req.into_body().collect().await?.to_bytes().len();
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!(
                            "got {n}"
                        )))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// A front server that sends every request on through one `Upstream`.
    async fn front(upstream: Arc<Upstream>, to: std::net::SocketAddr) -> std::net::SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let upstream = upstream.clone();
                        async move {
                            let connect =
                                move || async move { tokio::net::TcpStream::connect(to).await };
                            upstream
                                .send(req, connect)
                                .await
                                .map_err(|e| std::io::Error::other(e.to_string()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn connections_are_reused_and_bodies_stream_both_ways() {
        let accepted = Arc::new(AtomicUsize::new(0));
        let to = backend(accepted.clone()).await;
        let upstream = Arc::new(Upstream::default());
        let addr = front(upstream.clone(), to).await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        for i in 1..20usize {
            let body = vec![b'x'; i * 10_000];
            let req = Request::post(format!("http://{addr}/"))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let res = client.request(req).await.unwrap();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(text, format!("got {}", i * 10_000));
        }
        // One connection served every request, one after the other.
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(upstream.idle_count(), 1);
        // Requests without a body go over a connection of their own kind, reused too.
        for _ in 0..5 {
            let req = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let res = client.request(req).await.unwrap();
            let text = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(text, "got 0");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(upstream.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_reused_connection_that_closes_unanswered_is_retried_only_when_it_is_safe() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Each connection answers its first request and closes at its second, unanswered.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    for answer in [true, false] {
                        let mut req = Vec::new();
                        while !req.ends_with(b"\r\n\r\n") {
                            let mut b = [0u8; 1];
                            if s.read(&mut b).await.unwrap_or(0) == 0 {
                                return;
                            }
                            req.push(b[0]);
                        }
                        if answer {
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            s.write_all(ok).await.unwrap();
                        }
                    }
                });
            }
        });
        let upstream = Arc::new(Upstream::default());
        let addr = front(upstream.clone(), to).await;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let send = |method: http::Method| {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.request(req)
        };
        let res = send(http::Method::GET).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        // The kept connection goes unanswered: a GET is sent again over a new one.
        let res = send(http::Method::GET).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A POST may have reached the app: it is not sent twice.
        assert!(send(http::Method::POST).await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
