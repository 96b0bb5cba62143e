//! The DNS resolver that Skiff hands to its container instances.
//!
//! A small recursive-looking DNS server (RFC 1034 / RFC 1035) that:
//!
//! * answers names the platform owns itself (through an [`Answerer`] callback), with the
//!   AA flag set, and
//! * forwards every other name to upstream resolvers through `hickory-resolver`,
//!   passing NXDOMAIN / NODATA / SERVFAIL back to the client (RFC 2308 negative answers
//!   keep the upstream SOA in the authority section).
//!
//! Serving is done by `hickory-server`'s [`Server`] over UDP and TCP on the same
//! address (RFC 7766 requires TCP support), with a custom [`RequestHandler`].
//! EDNS(0) (RFC 6891) is echoed only when the query carried an OPT record; UDP answers
//! are capped at the client's advertised payload size (512 bytes without EDNS, and never
//! more than [`MAX_UDP_PAYLOAD`]) and marked truncated (TC) when they do not fit, so
//! clients retry over TCP.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig},
    net::{runtime::TokioRuntimeProvider, DnsError as NetDnsError, NetError},
    TokioResolver,
};
use hickory_server::{
    net::runtime::Time,
    proto::{
        op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
        rr::{rdata::A, DNSClass, Name, RData, Record, RecordType},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
    Server,
};
use tokio::net::{TcpListener, UdpSocket};

/// TTL, in seconds, of the A records the platform answers itself.
pub const LOCAL_TTL: u32 = 5;

/// Largest UDP response this server sends, whatever the client advertises
/// (the DNS Flag Day 2020 recommendation, avoiding IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Idle timeout of a TCP client connection (RFC 7766 section 6.2.3 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound of the per-attempt timeout towards upstream servers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Upper bound of hickory-resolver's `attempts` option, which counts retries after the
/// first try: at most two rounds of [`UPSTREAM_TIMEOUT`] each.
const UPSTREAM_RETRIES: usize = 1;

/// Number of queued responses per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// How many times `start` retries finding a port free for both UDP and TCP when bound
/// to port 0.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// What the platform answers itself for a name.
///
/// The name given to the [`Answerer`] is already lower-cased and has no trailing dot
/// (`"hello.localhost"`, `"metadata.google.internal"`; the root zone is `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalAnswer {
    /// The name has this IPv4 address: an A query gets one A record (TTL [`LOCAL_TTL`]),
    /// any other query type gets NOERROR with no records (NODATA, RFC 2308 section 2.2).
    A(std::net::Ipv4Addr),
    /// The name exists but has no record of the asked type: NOERROR, empty answer.
    NoData,
    /// The name does not exist: NXDOMAIN (RFC 1035 section 4.1.1, RFC 2308 section 2.1).
    NxDomain,
    /// Not ours: ask the upstream resolvers.
    Forward,
}

/// Callback deciding how a name is answered; see [`LocalAnswer`].
///
/// It is called once per query, on the server's tasks, so it must be cheap and must not
/// block.
pub type Answerer = Arc<dyn Fn(&str) -> LocalAnswer + Send + Sync>;

/// Errors from [`DnsServer::start`].
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The UDP or TCP socket could not be bound on `addr`.
    #[error("cannot bind DNS {protocol} socket on {addr}: {source}")]
    Bind {
        /// Address being bound: the requested one, or for TCP after a port-0 request the
        /// ephemeral address the UDP socket got.
        addr: SocketAddr,
        /// `"UDP"` or `"TCP"`.
        protocol: &'static str,
        /// Underlying OS error.
        #[source]
        source: io::Error,
    },
    /// The address of a bound socket could not be read back.
    #[error("cannot read local address of DNS socket: {0}")]
    LocalAddr(#[source] io::Error),
    /// `upstream` was `Some` but empty.
    #[error("no upstream DNS servers configured")]
    NoUpstream,
    /// An upstream address cannot be used (unspecified or broadcast IP).
    #[error("invalid upstream DNS server address {0}")]
    InvalidUpstream(SocketAddr),
    /// The host's resolver configuration (`/etc/resolv.conf`) could not be read, or the
    /// forwarding resolver could not be built from it.
    #[error("cannot set up upstream resolver: {0}")]
    Upstream(#[source] NetError),
}

/// A running DNS server bound on one address over UDP and TCP.
///
/// Dropping it aborts all serving tasks (the sockets are closed once the runtime has
/// dropped the aborted tasks); [`DnsServer::shutdown`] does the same gracefully and
/// returns once every socket is closed.
pub struct DnsServer {
    server: Server<Handler>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` and serves until shut down.
    ///
    /// `upstream` = `None` means read the host's `/etc/resolv.conf` (hickory-resolver's
    /// system config); `Some(list)` = forward to those name servers over UDP, falling back
    /// to TCP on truncation (port 53 if the given port is 0).
    ///
    /// When `addr` has port 0, UDP and TCP are bound to the same ephemeral port, readable
    /// through [`DnsServer::local_addr`].
    ///
    /// Must be called inside a Tokio runtime (the serving tasks are spawned on it).
    ///
    /// # Errors
    ///
    /// [`DnsError::Bind`] naming the address if a socket cannot be bound,
    /// [`DnsError::NoUpstream`] / [`DnsError::InvalidUpstream`] for a bad upstream list,
    /// [`DnsError::Upstream`] if the system resolver configuration cannot be read.
    pub async fn start(
        addr: SocketAddr,
        answer: Answerer,
        upstream: Option<Vec<SocketAddr>>,
    ) -> Result<DnsServer, DnsError> {
        let resolver = build_resolver(upstream)?;
        let (udp, tcp, local_addr) = bind_pair(addr).await?;

        let mut server = Server::new(Handler { answer, resolver });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(DnsServer { server, local_addr })
    }

    /// The address the server is bound to (UDP and TCP share it); useful when bound to
    /// port 0 in tests.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting queries, waits for the serving tasks to end and frees the sockets.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "DNS server ended with an error");
        }
    }
}

/// Builds the forwarding resolver, from `/etc/resolv.conf` or from the given list.
fn build_resolver(upstream: Option<Vec<SocketAddr>>) -> Result<TokioResolver, DnsError> {
    let mut builder = match upstream {
        None => TokioResolver::builder_tokio().map_err(DnsError::Upstream)?,
        Some(list) => {
            if list.is_empty() {
                return Err(DnsError::NoUpstream);
            }
            let mut servers = Vec::with_capacity(list.len());
            for sa in list {
                if sa.ip().is_unspecified() || is_broadcast(sa.ip()) {
                    return Err(DnsError::InvalidUpstream(sa));
                }
                let port = if sa.port() == 0 { 53 } else { sa.port() };
                let mut udp = ConnectionConfig::udp();
                udp.port = port;
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = port;
                servers.push(NameServerConfig::new(sa.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let opts = builder.options_mut();
    // The forwarder must not answer from the host's /etc/hosts: containers have their own.
    opts.use_hosts_file = ResolveHosts::Never;
    // Give up upstream (and answer SERVFAIL) before a stub resolver with the usual
    // 5 s timeout (glibc, musl) stops waiting for this server.
    opts.timeout = opts.timeout.min(UPSTREAM_TIMEOUT);
    opts.attempts = opts.attempts.min(UPSTREAM_RETRIES);
    builder.build().map_err(DnsError::Upstream)
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Binds a UDP socket and a TCP listener on the same address. With port 0 the UDP port
/// is chosen by the OS and TCP follows it, retrying if that TCP port is taken.
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let attempts = if addr.port() == 0 {
        EPHEMERAL_BIND_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                addr,
                protocol: "UDP",
                source,
            })?;
        let local = udp.local_addr().map_err(DnsError::LocalAddr)?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(source) => last_error = Some((local, source)),
        }
    }
    let (addr, source) = last_error.expect("at least one bind attempt");
    Err(DnsError::Bind {
        addr,
        protocol: "TCP",
        source,
    })
}

/// The [`RequestHandler`] plugged into hickory-server's [`Server`].
struct Handler {
    answer: Answerer,
    resolver: TokioResolver,
}

/// What goes into a response besides the header flags.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Reply {
    fn empty(code: ResponseCode, authoritative: bool) -> Self {
        Reply {
            code,
            authoritative,
            answers: Vec::new(),
            authorities: Vec::new(),
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // RFC 6891 section 6.1.1: answer with an OPT record only if the query had one.
        let response_edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns.set_version(0);
            edns
        });

        let reply = self.reply(request).await;

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;

        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, src = %request.src(), "cannot send DNS response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // RFC 6891 section 6.1.3: only EDNS version 0 is implemented.
            return Reply::empty(ResponseCode::BADVERS, false);
        }
        if request.metadata.message_type != MessageType::Query {
            return Reply::empty(ResponseCode::FormErr, false);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::empty(ResponseCode::NotImp, false);
        }
        // Exactly one question (RFC 9619).
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => return Reply::empty(ResponseCode::FormErr, false),
        };
        let query = info.query;
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::empty(ResponseCode::Refused, false);
        }
        if query.query_class() != DNSClass::IN {
            return Reply::empty(ResponseCode::Refused, false);
        }

        // The original (not lower-cased) name is echoed in the records so clients using
        // 0x20 case randomization accept them.
        let original = query.original().name();
        let key = query.name().to_string();
        let key = key.strip_suffix('.').unwrap_or(&key);

        match (self.answer)(key) {
            LocalAnswer::A(ip) => {
                let mut reply = Reply::empty(ResponseCode::NoError, true);
                if qtype == RecordType::A {
                    reply.answers.push(Record::from_rdata(
                        original.clone(),
                        LOCAL_TTL,
                        RData::A(A(ip)),
                    ));
                }
                reply
            }
            LocalAnswer::NoData => Reply::empty(ResponseCode::NoError, true),
            LocalAnswer::NxDomain => Reply::empty(ResponseCode::NXDomain, true),
            LocalAnswer::Forward => self.forward(original, qtype).await,
        }
    }

    /// Looks `name` up upstream and maps the outcome onto a response.
    async fn forward(&self, name: &Name, qtype: RecordType) -> Reply {
        let mut fqdn = name.clone();
        // A fully qualified name keeps the resolver from applying search domains.
        fqdn.set_fqdn(true);
        match self.resolver.lookup(fqdn, qtype).await {
            Ok(lookup) => {
                // Served from the resolver's cache: never hand out more than the time left.
                let left = lookup
                    .valid_until()
                    .saturating_duration_since(Instant::now())
                    .as_secs();
                let left = u32::try_from(left).unwrap_or(u32::MAX);
                let mut reply = Reply::empty(ResponseCode::NoError, false);
                reply.answers = lookup
                    .answers()
                    .iter()
                    .cloned()
                    .map(|mut record| {
                        record.ttl = record.ttl.min(left);
                        record
                    })
                    .collect();
                reply
            }
            Err(NetError::Dns(NetDnsError::NoRecordsFound(no_records))) => {
                // NXDOMAIN or NODATA; keep the SOA for negative caching (RFC 2308 section 3).
                let code = match no_records.response_code {
                    ResponseCode::NXDomain => ResponseCode::NXDomain,
                    _ => ResponseCode::NoError,
                };
                let mut reply = Reply::empty(code, false);
                if let Some(soa) = no_records.soa {
                    reply.authorities.push(soa.into_record_of_rdata());
                }
                reply
            }
            Err(NetError::Dns(NetDnsError::ResponseCode(code))) => {
                let code = match code {
                    ResponseCode::Refused => ResponseCode::Refused,
                    _ => ResponseCode::ServFail,
                };
                Reply::empty(code, false)
            }
            Err(error) => {
                tracing::debug!(%error, %name, %qtype, "upstream lookup failed");
                Reply::empty(ResponseCode::ServFail, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_resolver::config::ResolverOpts;
    use hickory_server::proto::{
        op::{Message, Query},
        rr::RecordType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    fn platform_answerer() -> Answerer {
        Arc::new(|name: &str| {
            if name.ends_with(".localhost") {
                LocalAnswer::A(Ipv4Addr::new(10, 0, 0, 1))
            } else if name == "metadata.google.internal" {
                LocalAnswer::A(Ipv4Addr::new(169, 254, 169, 254))
            } else if name == "gone.example" {
                LocalAnswer::NxDomain
            } else if name == "empty.internal" {
                LocalAnswer::NoData
            } else {
                LocalAnswer::Forward
            }
        })
    }

    fn upstream_answerer() -> Answerer {
        Arc::new(|name: &str| match name {
            "upstream.test" => LocalAnswer::A(Ipv4Addr::new(192, 0, 2, 7)),
            _ => LocalAnswer::NxDomain,
        })
    }

    /// Starts the upstream server and the platform server forwarding to it.
    async fn start_pair() -> (DnsServer, DnsServer) {
        let err = DnsServer::start(LOOPBACK, upstream_answerer(), Some(vec![]))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::NoUpstream), "{err:?}");

        // The upstream server never forwards; point it at an address that is never used.
        let upstream = DnsServer::start(
            LOOPBACK,
            upstream_answerer(),
            Some(vec!["127.0.0.1:9".parse().unwrap()]),
        )
        .await
        .unwrap();
        let server = DnsServer::start(
            LOOPBACK,
            platform_answerer(),
            Some(vec![upstream.local_addr()]),
        )
        .await
        .unwrap();
        (server, upstream)
    }

    /// Sends one raw query over UDP or TCP and decodes the response.
    async fn raw_query(
        server: SocketAddr,
        name: &str,
        qtype: RecordType,
        tcp: bool,
        edns: bool,
    ) -> Message {
        let mut msg = Message::query();
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            msg.set_edns(e);
        }
        let bytes = msg.to_vec().unwrap();
        let fut = async {
            if tcp {
                let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
                let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                stream.write_all(&framed).await.unwrap();
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                stream.read_exact(&mut buf).await.unwrap();
                buf
            } else {
                let socket = UdpSocket::bind(LOOPBACK).await.unwrap();
                socket.send_to(&bytes, server).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let (n, _) = socket.recv_from(&mut buf).await.unwrap();
                buf.truncate(n);
                buf
            }
        };
        let buf = tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("DNS response in time");
        let response = Message::from_vec(&buf).unwrap();
        assert_eq!(response.metadata.id, msg.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        response
    }

    fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
        msg.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn raw_queries_over_udp_and_tcp() {
        let (server, upstream) = start_pair().await;
        let addr = server.local_addr();
        for tcp in [false, true] {
            for edns in [false, true] {
                let r = raw_query(addr, "hello.localhost.", RecordType::A, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.metadata.authoritative);
                assert!(r.metadata.recursion_available);
                assert_eq!(a_records(&r), vec![Ipv4Addr::new(10, 0, 0, 1)]);
                assert_eq!(r.answers[0].ttl, LOCAL_TTL);
                // No OPT record back unless the query had one (glibc, musl).
                assert_eq!(r.edns.is_some(), edns, "tcp={tcp} edns={edns}");

                let r = raw_query(addr, "a.b.localhost.", RecordType::A, tcp, edns).await;
                assert_eq!(a_records(&r), vec![Ipv4Addr::new(10, 0, 0, 1)]);

                let r = raw_query(addr, "hello.localhost.", RecordType::AAAA, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.answers.is_empty());
                assert!(r.metadata.authoritative);

                let r = raw_query(addr, "hello.localhost.", RecordType::MX, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.answers.is_empty());

                let r =
                    raw_query(addr, "metadata.google.internal.", RecordType::A, tcp, edns).await;
                assert_eq!(a_records(&r), vec![Ipv4Addr::new(169, 254, 169, 254)]);

                let r = raw_query(addr, "empty.internal.", RecordType::A, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.answers.is_empty());

                let r = raw_query(addr, "gone.example.", RecordType::A, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
                assert!(r.metadata.authoritative);

                let r = raw_query(addr, "upstream.test.", RecordType::A, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(!r.metadata.authoritative);
                assert!(r.metadata.recursion_available);
                assert_eq!(a_records(&r), vec![Ipv4Addr::new(192, 0, 2, 7)]);
                assert!(r.answers[0].ttl <= LOCAL_TTL);

                let r = raw_query(addr, "upstream.test.", RecordType::AAAA, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NoError);
                assert!(r.answers.is_empty());

                let r = raw_query(addr, "nowhere.test.", RecordType::A, tcp, edns).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
                assert!(!r.metadata.authoritative);
            }
        }
        server.shutdown().await;
        upstream.shutdown().await;
    }

    #[tokio::test]
    async fn case_of_query_name_is_preserved() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let answerer: Answerer = Arc::new(move |name: &str| {
            log.lock().unwrap().push(name.to_owned());
            LocalAnswer::A(Ipv4Addr::new(10, 0, 0, 1))
        });
        let server = DnsServer::start(
            LOOPBACK,
            answerer,
            Some(vec!["192.0.2.1:53".parse().unwrap()]),
        )
        .await
        .unwrap();
        let r = raw_query(
            server.local_addr(),
            "HeLLo.LocalHost.",
            RecordType::A,
            false,
            true,
        )
        .await;
        assert_eq!(r.answers[0].name.to_string(), "HeLLo.LocalHost.");
        assert_eq!(seen.lock().unwrap().as_slice(), ["hello.localhost"]);
        server.shutdown().await;
    }

    fn client(server: SocketAddr, tcp: bool) -> TokioResolver {
        let mut conn = if tcp {
            ConnectionConfig::tcp()
        } else {
            ConnectionConfig::udp()
        };
        conn.port = server.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
            server.ip(),
            true,
            vec![conn],
        )]);
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .unwrap()
    }

    fn lookup_a(lookup: &hickory_resolver::lookup::Lookup) -> Vec<Ipv4Addr> {
        lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    /// hickory-resolver answers `*.localhost` itself (RFC 6761) without sending a query,
    /// so the `.localhost` names are covered by `raw_queries_over_udp_and_tcp` and only
    /// the other names go through this client.
    #[tokio::test]
    async fn hickory_resolver_client_over_udp_and_tcp() {
        let (server, upstream) = start_pair().await;
        for tcp in [false, true] {
            let resolver = client(server.local_addr(), tcp);

            let l = resolver
                .lookup("metadata.google.internal.", RecordType::A)
                .await
                .unwrap();
            assert_eq!(lookup_a(&l), vec![Ipv4Addr::new(169, 254, 169, 254)]);

            let err = resolver
                .lookup("metadata.google.internal.", RecordType::AAAA)
                .await
                .unwrap_err();
            assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err}");

            let l = resolver
                .lookup("upstream.test.", RecordType::A)
                .await
                .unwrap();
            assert_eq!(lookup_a(&l), vec![Ipv4Addr::new(192, 0, 2, 7)]);

            let err = resolver
                .lookup("gone.example.", RecordType::A)
                .await
                .unwrap_err();
            assert!(err.is_nx_domain(), "{err}");

            let ips = resolver
                .lookup_ip("metadata.google.internal.")
                .await
                .unwrap();
            assert_eq!(
                ips.iter().collect::<Vec<_>>(),
                vec![IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))]
            );
        }
        server.shutdown().await;
        upstream.shutdown().await;
    }

    #[tokio::test]
    async fn unreachable_upstream_gives_servfail() {
        // Take a UDP port and keep it silent: the forwarder times out on it.
        let silent = UdpSocket::bind(LOOPBACK).await.unwrap();
        let server = DnsServer::start(
            LOOPBACK,
            platform_answerer(),
            Some(vec![silent.local_addr().unwrap()]),
        )
        .await
        .unwrap();
        let r = raw_query(
            server.local_addr(),
            "example.com.",
            RecordType::A,
            false,
            false,
        )
        .await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn bind_errors_name_the_address_and_shutdown_frees_sockets() {
        let server = DnsServer::start(
            LOOPBACK,
            platform_answerer(),
            Some(vec!["192.0.2.1:53".parse().unwrap()]),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let err = DnsServer::start(addr, platform_answerer(), Some(vec![addr]))
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Bind { .. }), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");

        server.shutdown().await;
        let again = DnsServer::start(addr, platform_answerer(), Some(vec![addr]))
            .await
            .expect("port is free again after shutdown");
        drop(again);
        // Dropping aborts the serving tasks; the runtime closes the sockets when it next
        // runs, after which the address can be bound again.
        let mut rebound = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(server) = DnsServer::start(addr, platform_answerer(), Some(vec![addr])).await
            {
                rebound = Some(server);
                break;
            }
        }
        rebound
            .expect("port is free again after drop")
            .shutdown()
            .await;

        let err = DnsServer::start(
            LOOPBACK,
            platform_answerer(),
            Some(vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 53)]),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DnsError::InvalidUpstream(_)), "{err:?}");
    }
}
