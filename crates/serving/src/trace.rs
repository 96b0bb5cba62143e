//! Trace context for every request, as Cloud Run gives it to the container: a W3C
//! `traceparent` (<https://www.w3.org/TR/trace-context/>) and Google's
//! `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=FLAG` (32 hex digits, a decimal span id, `o=1`
//! when sampled). A trace the client started is kept: when it sent either header, the other is
//! derived from it with the same trace id; when it sent neither (or only malformed ones), a new
//! trace id and span id are made for both.

use http::{HeaderMap, HeaderValue};
use rand::Rng;

pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
pub const X_CLOUD_TRACE_CONTEXT: http::HeaderName =
    http::HeaderName::from_static("x-cloud-trace-context");

/// One request's trace: a 128-bit trace id, a 64-bit span id and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace with random, non-zero ids (zero ids are invalid in both formats).
    pub fn random() -> TraceContext {
        let mut rng = rand::thread_rng();
        TraceContext {
            trace_id: rng.gen_range(1..=u128::MAX),
            span_id: rng.gen_range(1..=u64::MAX),
            sampled: false,
        }
    }

    /// Parses `traceparent` version 00 (`00-<32 hex>-<16 hex>-<2 hex flags>`); a later
    /// version's first four fields are read the same way, as the spec asks. `None` if
    /// malformed or if an id is all zeros.
    pub fn from_traceparent(v: &str) -> Option<TraceContext> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Parses `X-Cloud-Trace-Context: TRACE_ID[/SPAN_ID][;o=0|1]` (trace id 32 hex digits,
    /// span id decimal). Without a span id one is made up. `None` if malformed.
    pub fn from_cloud_trace(v: &str) -> Option<TraceContext> {
        let (ids, opts) = match v.trim().split_once(';') {
            Some((ids, opts)) => (ids, Some(opts)),
            None => (v.trim(), None),
        };
        let (trace, span) = match ids.split_once('/') {
            Some((t, s)) => (t, Some(s)),
            None => (ids, None),
        };
        if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = match span {
            Some(s) => s.parse::<u64>().ok()?,
            None => rand::thread_rng().gen_range(1..=u64::MAX),
        };
        let sampled = match opts {
            None => false,
            Some(o) => match o.trim() {
                "o=1" => true,
                "o=0" => false,
                _ => return None,
            },
        };
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled,
        })
    }

    pub fn traceparent(&self) -> HeaderValue {
        // `00-` 32 hex digits `-` 16 hex digits `-0` flag, written into one buffer: `format!`'s
        // padded hex of a u128 was most of a request's cost of tracing.
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut b[3..35])
            .expect("16 bytes fill 32 hex digits");
        b[35] = b'-';
        hex::encode_to_slice(self.span_id.to_be_bytes(), &mut b[36..52])
            .expect("8 bytes fill 16 hex digits");
        b[52..54].copy_from_slice(b"-0");
        b[54] = b'0' + self.sampled as u8;
        HeaderValue::from_bytes(&b).expect("hex digits are a valid header value")
    }

    pub fn cloud_trace(&self) -> HeaderValue {
        // 32 hex digits `/` the decimal span id `;o=` flag.
        let mut trace = [0u8; 32];
        hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut trace)
            .expect("16 bytes fill 32 hex digits");
        let mut span = itoa::Buffer::new();
        let span = span.format(self.span_id).as_bytes();
        let mut b = Vec::with_capacity(trace.len() + 1 + span.len() + 4);
        b.extend_from_slice(&trace);
        b.push(b'/');
        b.extend_from_slice(span);
        b.extend_from_slice(b";o=");
        b.push(b'0' + self.sampled as u8);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(b))
            .expect("digits are a valid header value")
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Makes sure a request carries both trace headers (see the module's docs); returns its trace.
/// A valid header the client sent is kept as it is; a malformed one is replaced.
pub fn propagate(headers: &mut HeaderMap) -> TraceContext {
    let parent = header(headers, &TRACEPARENT).and_then(TraceContext::from_traceparent);
    let cloud = header(headers, &X_CLOUD_TRACE_CONTEXT).and_then(TraceContext::from_cloud_trace);
    match (parent, cloud) {
        (Some(p), Some(_)) => p,
        (Some(p), None) => {
            headers.insert(X_CLOUD_TRACE_CONTEXT, p.cloud_trace());
            p
        }
        (None, Some(c)) => {
            headers.insert(TRACEPARENT, c.traceparent());
            c
        }
        (None, None) => {
            let t = TraceContext::random();
            headers.insert(TRACEPARENT, t.traceparent());
            headers.insert(X_CLOUD_TRACE_CONTEXT, t.cloud_trace());
            t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(given: &[(&str, &str)], want_parent: &str, want_cloud: &str) {
        let mut h = HeaderMap::new();
        for (k, v) in given {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        propagate(&mut h);
        let got = |n: http::HeaderName| h.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(got(TRACEPARENT), want_parent, "{given:?}");
        assert_eq!(got(X_CLOUD_TRACE_CONTEXT), want_cloud, "{given:?}");
    }

    #[test]
    fn both_headers_are_written_zero_padded_and_at_full_width() {
        let t = TraceContext {
            trace_id: 0xa,
            span_id: 7,
            sampled: true,
        };
        assert_eq!(
            t.traceparent(),
            "00-0000000000000000000000000000000a-0000000000000007-01"
        );
        assert_eq!(t.cloud_trace(), "0000000000000000000000000000000a/7;o=1");
        let t = TraceContext {
            trace_id: u128::MAX,
            span_id: u64::MAX,
            sampled: false,
        };
        assert_eq!(
            t.traceparent(),
            format!("00-{}-{}-00", "f".repeat(32), "f".repeat(16)).as_str()
        );
        assert_eq!(
            t.cloud_trace(),
            format!("{}/18446744073709551615;o=0", "f".repeat(32)).as_str()
        );
    }

    #[test]
    fn a_clients_trace_is_kept_and_the_other_header_derived() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        check(
            &[("traceparent", tp)],
            tp,
            "4bf92f3577b34da6a3ce929d0e0e4736/67667974448284343;o=1",
        );
        check(
            &[(
                "x-cloud-trace-context",
                "105445aa7843bc8bf206b12000100000/1;o=0",
            )],
            "00-105445aa7843bc8bf206b12000100000-0000000000000001-00",
            "105445aa7843bc8bf206b12000100000/1;o=0",
        );
        // Both sent: both kept untouched, even if they disagree.
        check(
            &[
                ("traceparent", tp),
                (
                    "x-cloud-trace-context",
                    "105445aa7843bc8bf206b12000100000/7",
                ),
            ],
            tp,
            "105445aa7843bc8bf206b12000100000/7",
        );
    }

    #[test]
    fn malformed_or_absent_headers_get_a_new_trace_in_both() {
        for given in [
            vec![],
            vec![(
                "traceparent",
                "00-0000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
            vec![(
                "traceparent",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
            vec![(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )],
            vec![("x-cloud-trace-context", "nothex/1;o=1")],
            vec![(
                "x-cloud-trace-context",
                "105445aa7843bc8bf206b12000100000/x",
            )],
        ] {
            let mut h = HeaderMap::new();
            for (k, v) in &given {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            let t = propagate(&mut h);
            let tp = h.get(&TRACEPARENT).unwrap().to_str().unwrap();
            let ct = h.get(&X_CLOUD_TRACE_CONTEXT).unwrap().to_str().unwrap();
            assert_eq!(TraceContext::from_traceparent(tp), Some(t), "{given:?}");
            assert_eq!(TraceContext::from_cloud_trace(ct), Some(t), "{given:?}");
        }
        let a = propagate(&mut HeaderMap::new());
        let b = propagate(&mut HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
    }

    #[test]
    fn a_later_traceparent_version_is_read_by_its_first_fields() {
        let t = TraceContext::from_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        )
        .unwrap();
        assert_eq!(t.span_id, 0x00f067aa0ba902b7);
        assert!(TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_none());
    }
}
