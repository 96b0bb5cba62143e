//! HTTP/1.1 from the ingress to an instance for a request without a body, written over the
//! socket: the request head in one write, the response head parsed with `httparse` (hyper's
//! own parser) straight out of the read buffer, the body passed on as slices of that buffer.
//!
//! Why not hyper's client here: for the common proxied request (no request body, a response
//! with a `Content-Length`), hyper's HTTP/1.1 client connection cost about 21 000 instructions
//! per request (its dispatcher, its body channel and its connection state, on top of the
//! parse), a quarter of the ingress's whole cost, where the exchange itself needs a write, a
//! read and a parse. Requests with a body, protocol switches and HTTP/2 stay on hyper
//! ([`crate::upstream`]); this module speaks only what a bodiless exchange needs, by the rules
//! of RFC 9112:
//! - the response body's length (§6.3): none for `HEAD` and for 1xx, 204 and 304 answers;
//!   `Transfer-Encoding` ending in `chunked` (§7.1, chunk sizes and trailers parsed with
//!   `httparse`); any other `Transfer-Encoding`, or neither header, up to the connection's
//!   close; else `Content-Length`, and differing or malformed lengths are an error. A response
//!   with both loses its `Content-Length` and its connection is not reused (item 3);
//! - interim 1xx responses are skipped (a `101` is an error: the request asked no upgrade);
//! - persistence (§9.3): HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0
//!   only with `Connection: keep-alive`; a connection with bytes past its response, or whose
//!   body ends at its close, is not kept.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use hyper::body::Frame;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The largest response head taken (status line and headers), in bytes: hyper's client
/// default (8 KiB + 100 × 4 KiB).
const MAX_HEAD: usize = 8192 + 4096 * 100;

/// The most headers a response head (or a chunked body's trailers) may have: hyper's default.
const MAX_HEADERS: usize = 100;

/// How much the read buffer grows by when it is full.
const READ_CHUNK: usize = 16 * 1024;

/// What went wrong in an exchange.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed before any byte of a response arrived (the request
    /// may or may not have reached the app).
    #[error("the instance closed the connection before answering: {0}")]
    NoResponse(io::Error),
    /// The request could not be written (nothing of it was answered).
    #[error("writing the request to the instance: {0}")]
    Write(io::Error),
    /// The connection failed in the middle of a response.
    #[error("reading the instance's response: {0}")]
    Read(io::Error),
    /// The app answered something that is not an HTTP/1.x response this exchange can take.
    #[error("the instance's response is malformed: {0}")]
    Malformed(String),
}

/// One HTTP/1.1 connection to an instance, between exchanges: the socket and what was read
/// from it that no exchange has used (empty for a connection that may be reused).
pub struct Wire {
    io: TcpStream,
    buf: BytesMut,
}

/// How a response's body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: where the decoder stands.
    Chunked(Chunk),
    /// The body ends when the app closes the connection.
    Close,
    /// The body is over.
    Done,
}

/// A chunked body's decoder state (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the chunk's data are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailer fields, then the final CRLF.
    Trailers,
}

impl Wire {
    /// A connection over `io`, with nothing read yet.
    pub fn new(io: TcpStream) -> Wire {
        Wire {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take another request: the app has neither closed it
    /// nor sent anything unasked. It costs no system call unless the reactor saw the socket
    /// become readable since the last read drained it.
    pub fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends the bodiless `req` (origin-form target, hop-by-hop headers already removed) and
    /// reads the response's head. Returns the response's parts and its body, which reads the
    /// rest from this connection and gives it back ([`Reader::reusable`]) once complete.
    pub async fn exchange<B>(
        mut self,
        req: &Request<B>,
    ) -> Result<(http::response::Parts, Reader), WireError> {
        let head = encode_head(req);
        self.io.write_all(&head).await.map_err(WireError::Write)?;
        let head_request = req.method() == Method::HEAD;
        loop {
            let mut parts = loop {
                if let Some(parts) = take_head(&mut self.buf)? {
                    break parts;
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(WireError::Malformed(format!(
                        "a response head longer than {MAX_HEAD} bytes"
                    )));
                }
                let first = self.buf.is_empty();
                match self.read().await {
                    Ok(0) if first => {
                        return Err(WireError::NoResponse(io::ErrorKind::UnexpectedEof.into()))
                    }
                    Ok(0) => {
                        return Err(WireError::Read(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the connection closed within the response head",
                        )))
                    }
                    Ok(_) => {}
                    Err(e) if first => return Err(WireError::NoResponse(e)),
                    Err(e) => return Err(WireError::Read(e)),
                }
            };
            let status = parts.status;
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(WireError::Malformed(
                    "101 Switching Protocols to a request that asked no upgrade".into(),
                ));
            }
            if status.is_informational() {
                // 100 Continue, 102, 103 Early Hints: the final answer follows.
                continue;
            }
            let mut keep = keep_alive(&parts);
            if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
                && parts.headers.remove(http::header::CONTENT_LENGTH).is_some()
            {
                // Both: Transfer-Encoding wins, the length does not go on downstream, and the
                // connection, whose framing is in doubt, is not reused (RFC 9112 §6.3, item 3).
                keep = false;
            }
            let framing = if head_request
                || status == StatusCode::NO_CONTENT
                || status == StatusCode::NOT_MODIFIED
            {
                Framing::Done
            } else {
                framing(&parts.headers)?
            };
            let keep = keep && framing != Framing::Close;
            return Ok((
                parts,
                Reader {
                    wire: Some(self),
                    framing,
                    keep,
                },
            ));
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the connection's end.
    async fn read(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read(cx)).await
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        // A read that comes back short of the space clears the socket's readiness, so the
        // next one waits for the reactor rather than making a system call that would block.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// `METHOD TARGET HTTP/1.1`, each header as `name: value`, and the blank line.
fn encode_head<B>(req: &Request<B>) -> Vec<u8> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    let method = req.method().as_str().as_bytes();
    let headers = req.headers();
    let size = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut b = Vec::with_capacity(method.len() + target.len() + 13 + size + 2);
    b.extend_from_slice(method);
    b.push(b' ');
    b.extend_from_slice(target);
    b.extend_from_slice(b" HTTP/1.1\r\n");
    // `HeaderName`s and `HeaderValue`s hold no CR or LF: nothing here can end a line early.
    for (k, v) in headers {
        b.extend_from_slice(k.as_str().as_bytes());
        b.extend_from_slice(b": ");
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"\r\n");
    b
}

/// A response head at the start of `buf`, taken off it: its parts (header values are slices
/// of the head's bytes, not copies); `None` while it is incomplete (`buf` is left as it is).
fn take_head(buf: &mut BytesMut) -> Result<Option<http::response::Parts>, WireError> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Where each field's name and value lie in the head: the head's bytes are then frozen
    // once and every value shares them.
    let (status, version, at, used) = {
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let used = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(WireError::Malformed(e.to_string())),
        };
        let base = buf.as_ptr() as usize;
        let at: Vec<_> = res
            .headers
            .iter()
            .map(|h| {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                (name..name + h.name.len(), value..value + h.value.len())
            })
            .collect();
        (res.code, res.version, at, used)
    };
    let status = status
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| WireError::Malformed("no valid status code".into()))?;
    let head = buf.split_to(used).freeze();
    let mut headers = HeaderMap::with_capacity(at.len());
    for (name, value) in at {
        let name = HeaderName::from_bytes(&head[name.clone()]).map_err(|_| {
            WireError::Malformed(format!(
                "a header name {:?}",
                String::from_utf8_lossy(&head[name])
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value))
            .map_err(|_| WireError::Malformed(format!("the value of header {name}")))?;
        headers.append(name, value);
    }
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = match version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    parts.headers = headers;
    Ok(Some(parts))
}

/// The parsed fields as a `HeaderMap`, each name and value checked by the `http` crate.
fn header_map(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, WireError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for h in fields {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Malformed(format!("a header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| WireError::Malformed(format!("the value of header {}", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Whether the connection may carry another request after this response (RFC 9112 §9.3).
fn keep_alive(parts: &http::response::Parts) -> bool {
    let has = |token: &str| {
        parts
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match parts.version {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// How a response with a body frames it (RFC 9112 §6.3, rules 4 to 7).
fn framing(headers: &HeaderMap) -> Result<Framing, WireError> {
    // The last field's last coding is the one that frames.
    if let Some(last) = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(match chunked {
            true => Framing::Chunked(Chunk::Size),
            false => Framing::Close,
        });
    }
    let mut length = None;
    for v in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| WireError::Malformed("an invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed(
                    "differing Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// A response body being read off its connection.
pub struct Reader {
    /// `None` once the body is over or failed.
    wire: Option<Wire>,
    framing: Framing,
    /// The connection may take another request once the body is over.
    keep: bool,
}

impl Reader {
    /// Whether the body is over.
    pub fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The body's exact length, when its head gave one.
    pub fn exact_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// The connection, once the body is complete and the connection can take another
    /// request; `None` otherwise (it is closed when the reader is dropped).
    pub fn reusable(&mut self) -> Option<Wire> {
        if self.framing != Framing::Done || !self.keep {
            return None;
        }
        self.wire.take().filter(|w| w.buf.is_empty())
    }

    /// The body's next frame: data as it arrives (slices of the read buffer), the trailers
    /// of a chunked body, `None` at its end.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let r = self.step(cx);
        if let Poll::Ready(Some(Err(_))) = r {
            self.wire = None;
            self.framing = Framing::Done;
            self.keep = false;
        }
        r
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        loop {
            let Some(wire) = self.wire.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if wire.buf.is_empty() && ready!(fill(wire, cx, true))? == 0 {
                        continue;
                    }
                    let n = wire
                        .buf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.framing = match left {
                        0 => Framing::Done,
                        l => Framing::Length(l),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(wire.buf.split_to(n).freeze()))));
                }
                Framing::Close => {
                    if wire.buf.is_empty() && ready!(fill(wire, cx, false))? == 0 {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    let n = wire.buf.len();
                    return Poll::Ready(Some(Ok(Frame::data(wire.buf.split_to(n).freeze()))));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&wire.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        wire.buf.advance(used);
                        self.framing = Framing::Chunked(match size {
                            0 => Chunk::Trailers,
                            n => Chunk::Data(n),
                        });
                    }
                    Ok(httparse::Status::Partial) if wire.buf.len() < MAX_HEAD => {
                        ready!(fill(wire, cx, true))?;
                    }
                    _ => {
                        return Poll::Ready(Some(Err(WireError::Malformed(
                            "an invalid chunk size line".into(),
                        ))))
                    }
                },
                Framing::Chunked(Chunk::Data(left)) => {
                    if wire.buf.is_empty() {
                        ready!(fill(wire, cx, true))?;
                        continue;
                    }
                    let n = wire
                        .buf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.framing = Framing::Chunked(match left - n as u64 {
                        0 => Chunk::DataEnd,
                        l => Chunk::Data(l),
                    });
                    return Poll::Ready(Some(Ok(Frame::data(wire.buf.split_to(n).freeze()))));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if wire.buf.len() < 2 {
                        ready!(fill(wire, cx, true))?;
                        continue;
                    }
                    if &wire.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(WireError::Malformed(
                            "a chunk's data is not followed by CRLF".into(),
                        ))));
                    }
                    wire.buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&wire.buf, &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let trailers = match fields.is_empty() {
                                true => None,
                                false => Some(header_map(fields)),
                            };
                            wire.buf.advance(used);
                            self.framing = Framing::Done;
                            return Poll::Ready(trailers.map(|t| t.map(Frame::trailers)));
                        }
                        Ok(httparse::Status::Partial) if wire.buf.len() < MAX_HEAD => {
                            ready!(fill(wire, cx, true))?;
                        }
                        Ok(httparse::Status::Partial) => {
                            return Poll::Ready(Some(Err(WireError::Malformed(
                                "trailers too long".into(),
                            ))))
                        }
                        Err(e) => {
                            return Poll::Ready(Some(Err(WireError::Malformed(format!(
                                "the trailers: {e}"
                            )))))
                        }
                    }
                }
            }
        }
    }
}

/// Reads more into `wire`'s buffer. With `need`, the connection's end is an error (the body
/// was not complete); without, it reads `Ok(0)`.
fn fill(wire: &mut Wire, cx: &mut Context<'_>, need: bool) -> Poll<Result<usize, WireError>> {
    match ready!(wire.poll_read(cx)) {
        Ok(0) if need => Poll::Ready(Err(WireError::Read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the connection closed before the body's end",
        )))),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(e) => Poll::Ready(Err(WireError::Read(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A one-connection app on loopback that answers each request it reads with the next of
    /// `answers` (written in pieces of `piece` bytes), and then closes. Returns the address
    /// and the requests it read.
    async fn app(
        answers: Vec<Vec<u8>>,
        piece: usize,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            for answer in answers {
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 {
                        return got;
                    }
                    req.push(b[0]);
                }
                got.push(req);
                for p in answer.chunks(piece.max(1)) {
                    s.write_all(p).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            got
        });
        (addr, task)
    }

    async fn body(reader: &mut Reader) -> Result<(Vec<u8>, Option<HeaderMap>), WireError> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(f) = std::future::poll_fn(|cx| reader.poll_frame(cx)).await {
            let f = f?;
            match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((data, trailers))
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path)
            .header("host", "app.test")
            .header("x-forwarded-for", "192.0.2.1")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn requests_are_written_as_they_are_and_connections_reused() {
        for piece in [1, 7, 4096] {
            let answers = vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello".to_vec(),
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
                b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec(),
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
            ];
            let (addr, app) = app(answers, piece).await;
            let mut wire = Wire::new(TcpStream::connect(addr).await.unwrap());

            let (parts, mut r) = wire.exchange(&get("/a/./b?c")).await.unwrap();
            assert_eq!(parts.status, 200);
            let a: Vec<_> = parts.headers.get_all("x-a").iter().collect();
            assert_eq!(a, ["1", "2"]);
            assert_eq!(r.exact_len(), Some(5));
            assert_eq!(body(&mut r).await.unwrap(), (b"hello".to_vec(), None));
            wire = r.reusable().expect("kept");
            assert!(wire.usable());

            let (parts, mut r) = wire.exchange(&get("/chunked")).await.unwrap();
            assert_eq!(parts.status, 404);
            let (data, trailers) = body(&mut r).await.unwrap();
            assert_eq!(data, b"abcde");
            assert_eq!(trailers.unwrap()["x-trailer"], "t");
            wire = r.reusable().expect("kept");

            let (parts, mut r) = wire.exchange(&get("/none")).await.unwrap();
            assert_eq!(parts.status, 204);
            assert!(r.is_end_stream());
            wire = r.reusable().expect("kept");

            // HEAD: a Content-Length and no body.
            let head = Request::head("/").header("host", "h").body(()).unwrap();
            let (_, mut r) = wire.exchange(&head).await.unwrap();
            assert!(r.is_end_stream());
            assert_eq!(body(&mut r).await.unwrap().0, b"");
            wire = r.reusable().expect("kept");

            let (_, mut r) = wire.exchange(&get("/close")).await.unwrap();
            assert_eq!(r.exact_len(), None);
            assert_eq!(body(&mut r).await.unwrap().0, b"until the end");
            assert!(r.reusable().is_none(), "a body ended by the close");

            let got = app.await.unwrap();
            assert_eq!(
                String::from_utf8(got[0].clone()).unwrap(),
                "GET /a/./b?c HTTP/1.1\r\nhost: app.test\r\nx-forwarded-for: 192.0.2.1\r\n\r\n"
            );
            assert!(got[3].starts_with(b"HEAD / HTTP/1.1\r\n"));
            assert_eq!(got.len(), 5);
        }
    }

    #[tokio::test]
    async fn bad_answers_are_errors_and_end_the_connection() {
        for (answer, what) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
                "differing lengths",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "a negative length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
                "a length with a letter",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "an unasked switch",
            ),
            (b"SMTP ready\r\n\r\n", "not HTTP"),
            (
                b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
                "a space in a name",
            ),
        ] {
            let (addr, _app) = app(vec![answer.to_vec()], 4096).await;
            let wire = Wire::new(TcpStream::connect(addr).await.unwrap());
            match wire.exchange(&get("/")).await {
                Err(WireError::Malformed(_)) => {}
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: taken"),
            }
        }
        // A body cut short, a chunk without its CRLF: the body fails, the connection goes.
        for (answer, what) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
                "short",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
                "no CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "size",
            ),
        ] {
            let (addr, _app) = app(vec![answer.to_vec()], 4096).await;
            let wire = Wire::new(TcpStream::connect(addr).await.unwrap());
            let (_, mut r) = wire.exchange(&get("/")).await.unwrap();
            assert!(body(&mut r).await.is_err(), "{what}");
            assert!(r.reusable().is_none(), "{what}");
        }
        // Closed before any answer: told apart, so that a reused connection can be retried.
        let (addr, _app) = app(vec![], 4096).await;
        let wire = Wire::new(TcpStream::connect(addr).await.unwrap());
        assert!(matches!(
            wire.exchange(&get("/")).await,
            Err(WireError::NoResponse(_))
        ));
    }

    #[tokio::test]
    async fn an_idle_connection_the_app_closed_is_not_usable() {
        let (addr, app) = app(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()],
            4096,
        )
        .await;
        let wire = Wire::new(TcpStream::connect(addr).await.unwrap());
        let (_, mut r) = wire.exchange(&get("/")).await.unwrap();
        body(&mut r).await.unwrap();
        let wire = r.reusable().unwrap();
        // The app's task ends after its one answer, and its socket closes.
        app.await.unwrap();
        let mut closed = false;
        for _ in 0..100 {
            if !wire.usable() {
                closed = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(closed);
    }

    #[tokio::test]
    async fn transfer_encoding_wins_over_a_length_which_is_dropped() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let (addr, _app) = app(vec![answer.to_vec()], 4096).await;
        let wire = Wire::new(TcpStream::connect(addr).await.unwrap());
        let (parts, mut r) = wire.exchange(&get("/")).await.unwrap();
        assert!(!parts.headers.contains_key("content-length"));
        assert_eq!(body(&mut r).await.unwrap().0, b"hello");
        assert!(r.reusable().is_none());
    }

    #[test]
    fn persistence_follows_the_version_and_connection() {
        let parts = |v: Version, c: Option<&str>| {
            let mut r = http::Response::new(());
            *r.version_mut() = v;
            if let Some(c) = c {
                r.headers_mut().insert("connection", c.parse().unwrap());
            }
            r.into_parts().0
        };
        assert!(keep_alive(&parts(Version::HTTP_11, None)));
        assert!(keep_alive(&parts(Version::HTTP_11, Some("keep-alive"))));
        assert!(!keep_alive(&parts(Version::HTTP_11, Some("foo, Close"))));
        assert!(!keep_alive(&parts(Version::HTTP_10, None)));
        assert!(keep_alive(&parts(Version::HTTP_10, Some("Keep-Alive"))));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        assert_eq!(framing(&h(&[])).unwrap(), Framing::Close);
        assert_eq!(
            framing(&h(&[("content-length", "12")])).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framing(&h(&[("content-length", "12, 12")])).unwrap(),
            Framing::Length(12)
        );
        assert_eq!(
            framing(&h(&[("content-length", "0")])).unwrap(),
            Framing::Done
        );
        // Transfer-Encoding wins over Content-Length; only a final `chunked` frames.
        assert_eq!(
            framing(&h(&[
                ("transfer-encoding", "gzip, chunked"),
                ("content-length", "3")
            ]))
            .unwrap(),
            Framing::Chunked(Chunk::Size)
        );
        assert_eq!(
            framing(&h(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "gzip")
            ]))
            .unwrap(),
            Framing::Close
        );
        assert!(framing(&h(&[("content-length", "")])).is_err());
        assert!(framing(&h(&[("content-length", "+3")])).is_err());
    }
}
