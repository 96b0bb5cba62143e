//! The Pub/Sub listener (`skiff server --pubsub ADDR`): gRPC and REST on one port, told apart
//! by `content-type: application/grpc` (gRPC paths are `/google.pubsub.v1.*`), over HTTP/1.1
//! and HTTP/2 (prior knowledge, as gRPC clients speak it).
//!
//! Who may call: clients pointed here with `PUBSUB_EMULATOR_HOST` send no credentials, so a
//! caller connecting from a loopback address may call without any; every other caller needs
//! `Authorization: Bearer TOKEN` where TOKEN passes the server's check (the admin token, or an
//! identity token whose subject is the admin).

use crate::broker::Broker;
use crate::grpc::Grpc;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// Decides whether a bearer token may call the API.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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
    State(check): State<TokenCheck>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if check(t) => next.run(req).await,
        Some(_) => refuse(
            is_grpc(&req),
            "the bearer token is neither the admin token nor an identity token of the admin",
        ),
        None if peer.ip().is_loopback() => next.run(req).await,
        None => refuse(
            is_grpc(&req),
            "callers from other hosts need Authorization: Bearer <admin token> (DATA_DIR/admin.token) or `skiff auth print-identity-token`",
        ),
    }
}

/// Serves the listener until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    check: TokenCheck,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(broker).layer(axum::middleware::from_fn_with_state(check, credentials));
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
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
        let check: TokenCheck = Arc::new(|t: &str| t == "good");
        let server = tokio::spawn(serve(listener, broker, check, std::future::pending()));
        let http = reqwest::Client::new();
        let get = |host: String, token: Option<&'static str>| {
            let mut req = http.get(format!("http://{host}:{port}/v1/projects/p/topics"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        let outside = outside_address().to_string();
        assert_eq!(get("127.0.0.1".into(), None).await, 200);
        assert_eq!(get(outside.clone(), None).await, 401);
        assert_eq!(get(outside.clone(), Some("bad")).await, 401);
        assert_eq!(get(outside.clone(), Some("good")).await, 200);
        // A wrong token is refused from loopback too.
        assert_eq!(get("127.0.0.1".into(), Some("bad")).await, 401);
        server.abort();
    }
}
