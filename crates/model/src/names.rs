//! Resource names: service, job and namespace names are DNS labels; revisions are named
//! `SERVICE-NNNNN-xxx` like Cloud Run's.

use crate::InvalidInput;
use rand::Rng;

/// A random (version 4) UUID in its 36-character text form, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`
/// (RFC 9562 §5.4): what Kubernetes and Google APIs give as an object's `uid`, and Cloud
/// Build as a build's id.
pub fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Checks a service, job or namespace name: lower-case letters, digits and `-`, starting with a
/// letter, not ending with `-`, at most `max` characters.
pub fn validate_name(kind: &str, name: &str, max: usize) -> Result<(), InvalidInput> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(format!(
            "invalid {kind} name {name:?}: use at most {max} lower-case letters, digits and '-', starting with a letter and not ending with '-'"
        )))
    }
}

/// Service names end up in host names (`TAG---SERVICE.NAMESPACE.localhost`), so they are short.
pub fn validate_service_name(name: &str) -> Result<(), InvalidInput> {
    validate_name("service", name, 49)?;
    if name.contains("---") {
        return Err(InvalidInput::new(format!(
            "invalid service name {name:?}: '---' separates tags from service names in URLs"
        )));
    }
    Ok(())
}

pub fn validate_namespace(name: &str) -> Result<(), InvalidInput> {
    validate_name("project", name, 63)
}

/// A revision tag: used in `TAG---SERVICE` host names.
pub fn validate_tag(tag: &str) -> Result<(), InvalidInput> {
    validate_name("tag", tag, 46)?;
    if tag.contains("---") {
        return Err(InvalidInput::new(format!(
            "invalid tag {tag:?}: it may not contain '---'"
        )));
    }
    Ok(())
}

/// `SERVICE-NNNNN-xxx`: the generation as 5 digits and 3 random lower-case letters or digits.
pub fn revision_name(service: &str, generation: u64) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..3)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    format!("{service}-{generation:05}-{suffix}")
}

/// Host name a service (or one of its tags) answers at, without the port.
pub fn service_host(namespace: &str, service: &str, tag: Option<&str>) -> String {
    let svc = match tag {
        Some(t) => format!("{t}---{service}"),
        None => service.to_string(),
    };
    if namespace == "default" {
        format!("{svc}.localhost")
    } else {
        format!("{svc}.{namespace}.localhost")
    }
}

/// What a `Host` header names: `(namespace, service, tag)`.
pub fn parse_service_host(host: &str) -> Option<(String, String, Option<String>)> {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let rest = host.strip_suffix(".localhost")?;
    let (first, namespace) = match rest.split_once('.') {
        Some((f, ns)) if !ns.contains('.') => (f.to_string(), ns.to_string()),
        Some(_) => return None,
        None => (rest.to_string(), "default".to_string()),
    };
    let (tag, service) = match first.split_once("---") {
        Some((t, s)) => (Some(t.to_string()), s.to_string()),
        None => (None, first),
    };
    if service.is_empty() {
        return None;
    }
    Some((namespace, service, tag))
}

/// Where services answer and what URLs they are given: `skiff server --domain DOMAIN` and the
/// ingress's ports.
///
/// Without a domain (the default, for a laptop) a service answers at
/// `[TAG---]SERVICE[.NAMESPACE].localhost` ([`service_host`]) and its URL is
/// `http://HOST:HTTP_PORT`. With `--domain DOMAIN` its URL's host is one DNS label under DOMAIN,
/// so that one wildcard certificate `*.DOMAIN` covers every service, tag and project:
/// `[TAG---]SERVICE[-NAMESPACE].DOMAIN`, the default namespace left out (Cloud Run's own
/// scheme is `TAG---SERVICE-HASH-REGION.a.run.app`); the URL is `https://HOST[:HTTPS_PORT]`
/// when the ingress has an HTTPS listener, else `http://HOST[:HTTP_PORT]` (a port left out
/// when it is the scheme's default). The `localhost` hosts keep answering too.
///
/// `SERVICE-NAMESPACE` can be read more than one way (both may hold `-`):
/// [`ServiceUrls::parse`] gives every reading, the default namespace first, then the longest
/// service name, and the ingress takes the first that names a service it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUrls {
    domain: Option<String>,
    http_port: u16,
    https_port: Option<u16>,
}

impl ServiceUrls {
    /// URLs under `domain` (`None` or `localhost`: the `localhost` scheme), with the ingress
    /// on `http_port` and, if it has one, its HTTPS listener on `https_port`.
    ///
    /// Errors: a domain that is not a DNS name of at least two labels (`apps.example.com`).
    pub fn new(
        domain: Option<&str>,
        http_port: u16,
        https_port: Option<u16>,
    ) -> Result<Self, InvalidInput> {
        let domain = match domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase()) {
            None => None,
            Some(d) if d == "localhost" => None,
            Some(d) => {
                let labels: Vec<&str> = d.split('.').collect();
                let label_ok = |l: &&str| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                };
                if labels.len() < 2 || !labels.iter().all(label_ok) || d.len() > 200 {
                    return Err(InvalidInput::new(format!(
                        "invalid --domain {d:?}: give a DNS name under which services get their host names, e.g. apps.example.com"
                    )));
                }
                Some(d)
            }
        };
        Ok(ServiceUrls {
            domain,
            http_port,
            https_port,
        })
    }

    /// The `localhost` scheme on `http_port` (the default).
    pub fn localhost(http_port: u16) -> Self {
        ServiceUrls {
            domain: None,
            http_port,
            https_port: None,
        }
    }

    /// The domain given with `--domain`, if any.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The ingress's HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The host a service's (or tag's) URL names, without a port.
    pub fn host(&self, namespace: &str, service: &str, tag: Option<&str>) -> String {
        let Some(domain) = &self.domain else {
            return service_host(namespace, service, tag);
        };
        let mut label = match tag {
            Some(t) => format!("{t}---{service}"),
            None => service.to_string(),
        };
        if namespace != "default" {
            label = format!("{label}-{namespace}");
        }
        format!("{label}.{domain}")
    }

    /// Every host a service (or tag) answers at: [`ServiceUrls::host`] and, under a domain,
    /// the `localhost` one too. An identity token whose audience names any of them is
    /// accepted.
    pub fn hosts(&self, namespace: &str, service: &str, tag: Option<&str>) -> Vec<String> {
        let mut v = vec![service_host(namespace, service, tag)];
        if self.domain.is_some() {
            v.push(self.host(namespace, service, tag));
        }
        v
    }

    /// A service's (or tag's) URL, e.g. `http://hello.localhost:8080` or
    /// `https://hello.apps.example.com`.
    pub fn url(&self, namespace: &str, service: &str, tag: Option<&str>) -> String {
        let host = self.host(namespace, service, tag);
        match (&self.domain, self.https_port) {
            (None, _) => format!("http://{host}:{}", self.http_port),
            (Some(_), Some(443)) => format!("https://{host}"),
            (Some(_), Some(p)) => format!("https://{host}:{p}"),
            (Some(_), None) if self.http_port == 80 => format!("http://{host}"),
            (Some(_), None) => format!("http://{host}:{}", self.http_port),
        }
    }

    /// Whether `host` (any case, with or without a port) is a name Skiff's ingress serves
    /// services at: `localhost`, `*.localhost`, or under the domain.
    pub fn is_service_host(&self, host: &str) -> bool {
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        host == "localhost"
            || host.ends_with(".localhost")
            || self.domain.as_ref().is_some_and(|d| {
                host.strip_suffix(d.as_str())
                    .is_some_and(|r| r.ends_with('.'))
            })
    }

    /// What a `Host` header may name, as `(namespace, service, tag)` readings in the order to
    /// try them: the `localhost` scheme's one reading, or under the domain the label read as
    /// `SERVICE` in the default namespace, then as `SERVICE-NAMESPACE` split at each `-`, the
    /// longest service name first. Empty when the host is neither.
    pub fn parse(&self, host: &str) -> Vec<(String, String, Option<String>)> {
        if let Some(one) = parse_service_host(host) {
            return vec![one];
        }
        let Some(domain) = &self.domain else {
            return Vec::new();
        };
        let host = strip_port(host).trim_end_matches('.').to_ascii_lowercase();
        let Some(label) = host
            .strip_suffix(domain.as_str())
            .and_then(|r| r.strip_suffix('.'))
        else {
            return Vec::new();
        };
        if label.is_empty() || label.contains('.') {
            return Vec::new();
        }
        let (tag, rest) = match label.split_once("---") {
            Some((t, r)) => (Some(t.to_string()), r),
            None => (None, label),
        };
        let mut out = Vec::new();
        if !rest.is_empty() {
            out.push(("default".to_string(), rest.to_string(), tag.clone()));
        }
        for (i, _) in rest
            .match_indices('-')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let (service, ns) = (&rest[..i], &rest[i + 1..]);
            if !service.is_empty() && !ns.is_empty() && ns != "default" {
                out.push((ns.to_string(), service.to_string(), tag.clone()));
            }
        }
        out
    }
}

/// `host:port` → `host` (a bracketed IPv6 literal kept whole).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_differ() {
        let a = new_uuid();
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{a}"
        );
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "{a}");
        assert!(parts[2].starts_with('4'), "{a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, new_uuid());
    }

    #[test]
    fn names() {
        for ok in ["hello", "a", "my-svc-2"] {
            validate_service_name(ok).unwrap();
        }
        for bad in ["", "Hello", "1abc", "a_b", "abc-", "a---b", &"x".repeat(50)] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revision_names() {
        let r = revision_name("hello", 3);
        assert!(r.starts_with("hello-00003-"), "{r}");
        assert_eq!(r.len(), "hello-00003-abc".len());
    }

    #[test]
    fn hosts() {
        type Want<'a> = Option<(&'a str, &'a str, Option<&'a str>)>;
        let cases: &[(&str, Want)] = &[
            ("hello.localhost", Some(("default", "hello", None))),
            ("hello.localhost:8080", Some(("default", "hello", None))),
            ("HELLO.localhost.", Some(("default", "hello", None))),
            ("hello.team.localhost:80", Some(("team", "hello", None))),
            (
                "blue---hello.localhost",
                Some(("default", "hello", Some("blue"))),
            ),
            (
                "blue---hello.team.localhost",
                Some(("team", "hello", Some("blue"))),
            ),
            ("localhost", None),
            ("example.com", None),
            ("a.b.c.localhost", None),
        ];
        for (host, want) in cases {
            let got = parse_service_host(host);
            let want = want.map(|(n, s, t)| (n.to_string(), s.to_string(), t.map(String::from)));
            assert_eq!(got, want, "{host}");
        }
        assert_eq!(service_host("default", "a", None), "a.localhost");
        assert_eq!(service_host("t", "a", Some("x")), "x---a.t.localhost");
    }

    #[test]
    fn service_urls_under_a_domain() {
        let local = ServiceUrls::localhost(8080);
        assert_eq!(
            local.url("default", "hello", None),
            "http://hello.localhost:8080"
        );
        assert_eq!(
            ServiceUrls::new(Some("localhost"), 8080, Some(8443)).unwrap(),
            ServiceUrls {
                https_port: Some(8443),
                ..local.clone()
            }
        );
        let d = ServiceUrls::new(Some("Apps.Test."), 80, Some(443)).unwrap();
        assert_eq!(d.url("default", "hello", None), "https://hello.apps.test");
        assert_eq!(
            d.url("team-a", "my-app", Some("blue")),
            "https://blue---my-app-team-a.apps.test"
        );
        assert_eq!(
            ServiceUrls::new(Some("apps.test"), 80, Some(8443))
                .unwrap()
                .url("default", "a", None),
            "https://a.apps.test:8443"
        );
        assert_eq!(
            ServiceUrls::new(Some("apps.test"), 8080, None)
                .unwrap()
                .url("default", "a", None),
            "http://a.apps.test:8080"
        );
        assert_eq!(
            ServiceUrls::new(Some("apps.test"), 80, None)
                .unwrap()
                .url("default", "a", None),
            "http://a.apps.test"
        );
        assert_eq!(
            d.hosts("t", "a", None),
            vec!["a.t.localhost".to_string(), "a-t.apps.test".to_string()]
        );
        for bad in ["", "com", "a..b", "-a.b", "a_b.c", "a b.c"] {
            let e = ServiceUrls::new(Some(bad), 80, None).unwrap_err();
            assert!(e.to_string().contains("invalid --domain"), "{bad}: {e}");
        }

        type Reading<'a> = (&'a str, &'a str, Option<&'a str>);
        let cases: &[(&str, &[Reading])] = &[
            ("hello.apps.test", &[("default", "hello", None)]),
            ("HELLO.apps.test.:8443", &[("default", "hello", None)]),
            (
                "my-app-team.apps.test",
                &[
                    ("default", "my-app-team", None),
                    ("team", "my-app", None),
                    ("app-team", "my", None),
                ],
            ),
            (
                "blue---a-t.apps.test",
                &[("default", "a-t", Some("blue")), ("t", "a", Some("blue"))],
            ),
            ("hello.team.localhost", &[("team", "hello", None)]),
            ("a.b.apps.test", &[]),
            ("apps.test", &[]),
            ("hello.other.test", &[]),
            ("xapps.test", &[]),
        ];
        for (host, want) in cases {
            let want: Vec<_> = want
                .iter()
                .map(|(n, s, t)| (n.to_string(), s.to_string(), t.map(String::from)))
                .collect();
            assert_eq!(d.parse(host), want, "{host}");
        }
        assert!(local.parse("hello.apps.test").is_empty());
        assert!(d.is_service_host("a.apps.test:443") && d.is_service_host("a.localhost"));
        assert!(!d.is_service_host("apps.test") && !d.is_service_host("a.xapps.test"));
        assert!(!local.is_service_host("a.apps.test"));
    }
}
