//! Connections from the ingress to one instance: HTTP/1.1 keep-alive connections, kept per
//! instance, each driven by the task of the request that uses it. A pooled client would give
//! every connection a task of its own, and every request two hand-offs between tasks (the
//! request to the connection's task, the response back); here the request's task writes the
//! request, reads the response head, and — from the response body — reads the rest.

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

type Driver = http1::Connection<TokioIo<tokio::net::TcpStream>, Incoming>;

/// Most idle connections kept per instance.
const MAX_IDLE: usize = 1024;

/// One connection to an instance.
pub struct Conn {
    tx: http1::SendRequest<Incoming>,
    /// The connection's I/O; `None` once it has ended.
    driver: Option<Pin<Box<Driver>>>,
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

/// The idle connections to one instance.
#[derive(Default)]
pub struct Upstream {
    idle: Mutex<Vec<Conn>>,
}

impl Upstream {
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Conn> {
        loop {
            let mut c = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
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
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(c);
            }
        }
    }

    /// Sends `req` over an idle connection, or a new one that `connect` opens. A request
    /// that an idle connection turned down unsent (the app closed it meanwhile) is sent again
    /// over a new connection. Returns the response head and the connection, which the
    /// response body must go on driving.
    pub async fn send<F, Fut>(
        &self,
        mut req: Request<Incoming>,
        connect: F,
    ) -> Result<(Response<Incoming>, Conn), crate::proxy::BoxError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<tokio::net::TcpStream>>,
    {
        let pooled = std::future::poll_fn(|cx| Poll::Ready(self.checkout(cx))).await;
        let mut fresh = pooled.is_none();
        let mut conn = match pooled {
            Some(c) => c,
            None => open(&connect).await?,
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
                Ok(res) => return Ok((res, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        conn = open(&connect).await?;
                        fresh = true;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

async fn open<F, Fut>(connect: &F) -> Result<Conn, crate::proxy::BoxError>
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
    })
}
