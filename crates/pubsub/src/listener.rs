//! The Pub/Sub listener (`skiff server --pubsub ADDR`): gRPC and REST on one port, told apart
//! by `content-type: application/grpc` (gRPC paths are `/google.pubsub.v1.*`), over HTTP/1.1
//! and HTTP/2 (prior knowledge, as gRPC clients speak it).
//!
//! Who may call: clients pointed here with `PUBSUB_EMULATOR_HOST` send no credentials, so a
//! caller connecting from a loopback address, or one the server trusts by its addresses (Skiff's
//! own instances and job tasks, see [`PeerCheck`]), may call without any; every other caller
//! needs `Authorization: Bearer TOKEN` where TOKEN passes the server's check (the admin token,
//! or an identity token whose subject is the admin).

use crate::broker::Broker;
use crate::grpc::Grpc;
use crate::iam::Caller;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Decides who a bearer token stands for: `Some(Caller::Admin)` for the admin's,
/// `Some(Caller::Account(email))` for a service account's (then checked against resource
/// policies, see [`crate::iam`]), `None` for a token the server did not sign or that expired.
pub type TokenCheck = Arc<dyn Fn(&str) -> Option<Caller> + Send + Sync>;

/// Decides whether a connection may call without credentials, by `(local, peer)` address:
/// the server passes one that recognises its instances (a source in the instance subnet,
/// arriving on the gateway address). Loopback callers need no such check.
pub type PeerCheck = Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// A connection's two ends, as the credentials check sees them.
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    /// The listener's address the connection arrived on.
    pub local: SocketAddr,
    /// The caller's address.
    pub peer: SocketAddr,
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Ends {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        let peer = *stream.remote_addr();
        Ends {
            local: stream.io().local_addr().unwrap_or(peer),
            peer,
        }
    }
}

/// Who may call: see the module's documentation.
#[derive(Clone)]
struct Auth {
    token: TokenCheck,
    trusted: PeerCheck,
}

/// gRPC (Publisher, Subscriber) and REST over `broker`, without any auth layer.
pub fn app(broker: Arc<Broker>) -> axum::Router {
    let (publisher, subscriber) = Grpc::services(broker.clone());
    let grpc = tonic::service::Routes::new(publisher)
        .add_service(subscriber)
        .into_axum_router();
    grpc.merge(crate::rest::router(broker))
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A refusal in the caller's protocol: a gRPC status or Google's JSON error.
fn refuse(grpc: bool, message: &str) -> Response {
    if grpc {
        tonic::Status::unauthenticated(message)
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        crate::error::PubsubError::Unauthenticated(message.to_string()).into_response()
    }
}

async fn credentials(
    State(auth): State<Auth>,
    ConnectInfo(ends): ConnectInfo<Ends>,
    req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let caller = match token {
        Some(t) => match (auth.token)(t) {
            Some(c) => c,
            None => {
                return refuse(
                    is_grpc(&req),
                    "the bearer token is not one this server signed, it expired, or it names another audience: use the admin token, `skiff auth print-identity-token` without --audience, or an access token from the metadata server",
                )
            }
        },
        None if ends.peer.ip().is_loopback() || (auth.trusted)(ends.local, ends.peer) => {
            Caller::Admin
        }
        None => {
            return refuse(
                is_grpc(&req),
                "callers from other hosts need Authorization: Bearer <admin token> (DATA_DIR/admin.token) or `skiff auth print-identity-token`",
            )
        }
    };
    let mut req = req;
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Serves the listener until `stop` resolves; `check` decides on bearer tokens, `trusted` on
/// callers without one from other than loopback.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    check: TokenCheck,
    trusted: PeerCheck,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let auth = Auth {
        token: check,
        trusted,
    };
    let app = app(broker).layer(axum::middleware::from_fn_with_state(auth, credentials));
    axum::serve(listener, app.into_make_service_with_connect_info::<Ends>())
        .with_graceful_shutdown(stop)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This host's address on its default route (no packet is sent), as another host would
    /// reach it.
    fn outside_address() -> std::net::IpAddr {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect("192.0.2.1:9").expect("a default route");
        let ip = s.local_addr().unwrap().ip();
        assert!(!ip.is_loopback(), "{ip}");
        ip
    }

    #[tokio::test]
    async fn loopback_needs_no_credentials_other_callers_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::open(dir.path()).unwrap();
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let check: TokenCheck = Arc::new(|t: &str| (t == "good").then_some(Caller::Admin));
        let outside = outside_address();
        let trusted: PeerCheck = Arc::new(|_, _| false);
        let server = tokio::spawn(serve(
            listener,
            broker.clone(),
            check.clone(),
            trusted,
            std::future::pending(),
        ));
        let http = reqwest::Client::new();
        let get = |host: String, token: Option<&'static str>| {
            let mut req = http.get(format!("http://{host}:{port}/v1/projects/p/topics"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let outside_ip = outside;
        let outside = outside.to_string();
        assert_eq!(get("127.0.0.1".into(), None).await, 200);
        assert_eq!(get(outside.clone(), None).await, 401);
        assert_eq!(get(outside.clone(), Some("bad")).await, 401);
        assert_eq!(get(outside.clone(), Some("good")).await, 200);
        // A wrong token is refused from loopback too.
        assert_eq!(get("127.0.0.1".into(), Some("bad")).await, 401);
        server.abort();
        // A listener whose peer check trusts this caller's address lets it in without a token.
        let listener = tokio::net::TcpListener::bind((outside_ip, 0))
            .await
            .unwrap();
        let port2 = listener.local_addr().unwrap().port();
        let trusted: PeerCheck =
            Arc::new(move |local, peer| local.ip() == outside_ip && peer.ip() == outside_ip);
        let server = tokio::spawn(serve(
            listener,
            broker,
            check,
            trusted,
            std::future::pending(),
        ));
        let url = format!("http://{outside}:{port2}/v1/projects/p/topics");
        assert_eq!(http.get(&url).send().await.unwrap().status().as_u16(), 200);
        server.abort();
    }
}
