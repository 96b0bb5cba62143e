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
}
