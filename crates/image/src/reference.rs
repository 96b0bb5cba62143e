//! Image references: parsing and validating `NAME[:TAG]` and `NAME@sha256:HEX` the way the
//! distribution reference grammar does, and normalizing them to the familiar short form
//! (`docker.io/library/busybox` is stored as `busybox`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// The tag a reference without one gets.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed image reference. Exactly one of `tag` and `digest` is set: `NAME` alone gets the
/// tag `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// Repository name in familiar form, e.g. `busybox` or `registry.local:5000/team/app`.
    pub name: String,
    /// Tag, when the reference names one (or defaulted to `latest`).
    pub tag: Option<String>,
    /// Manifest digest `sha256:HEX`, when the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// `NAME:TAG` or `NAME@sha256:HEX`: the form references are stored and listed under.
    pub fn normalized(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.digest, &self.tag) {
            (Some(d), _) => write!(f, "{}@{}", self.name, d),
            (None, Some(t)) => write!(f, "{}:{}", self.name, t),
            (None, None) => write!(f, "{}:{}", self.name, DEFAULT_TAG),
        }
    }
}

fn invalid(input: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Parse `NAME[:TAG]` or `NAME@sha256:HEX`. The name is validated against the distribution
/// grammar (lower-case path components, optional registry host with port), the tag against
/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`, the digest must be `sha256:` and 64 lower-case hex
/// digits. A missing tag becomes `latest`.
pub fn parse_reference(s: &str) -> Result<Reference, ImageError> {
    if s.is_empty() {
        return Err(invalid(
            s,
            "it is empty; give NAME[:TAG] or NAME@sha256:HEX",
        ));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            s,
            "it contains whitespace; give NAME[:TAG] or NAME@sha256:HEX",
        ));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, d)) => (
            rest,
            Some(parse_digest(d).map_err(|e| match e {
                ImageError::InvalidReference { reason, .. } => invalid(s, reason),
                other => other,
            })?),
        ),
        None => (s, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let i = last_slash + i;
            (&rest[..i], Some(&rest[i + 1..]))
        }
        None => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag).map_err(|r| invalid(s, r))?;
        if digest.is_some() {
            return Err(invalid(
                s,
                "it has both a tag and a digest; give NAME:TAG or NAME@sha256:HEX",
            ));
        }
    }
    let name = validate_name(name).map_err(|r| invalid(s, r))?;
    let tag = match (&digest, tag) {
        (Some(_), _) => None,
        (None, Some(t)) => Some(t.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
    };
    Ok(Reference { name, tag, digest })
}

/// Validate a manifest digest `sha256:HEX` (64 lower-case hex digits) and return it.
pub fn parse_digest(s: &str) -> Result<String, ImageError> {
    let Some((alg, hex)) = s.split_once(':') else {
        return Err(invalid(s, "a digest must look like sha256:HEX"));
    };
    if alg != "sha256" {
        return Err(invalid(
            s,
            format!("digest algorithm {alg:?} is not supported; use sha256"),
        ));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            s,
            "a sha256 digest needs 64 lower-case hex digits after sha256:",
        ));
    }
    Ok(s.to_string())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is longer than {MAX_TAG_LEN} characters"));
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let first = chars.next().unwrap_or('-');
    if !word(first) || !chars.all(|c| word(c) || c == '.' || c == '-') {
        return Err(format!(
            "tag {tag:?} may only hold letters, digits, '_', '.' and '-' and must not start \
             with '.' or '-'"
        ));
    }
    Ok(())
}

fn is_domain(component: &str) -> bool {
    component.contains('.')
        || component.contains(':')
        || component == "localhost"
        || component.chars().any(|c| c.is_ascii_uppercase())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return Err(format!("registry port {port:?} must be a number"));
        }
    }
    let ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !ok {
        return Err(format!("registry host {host:?} is not a valid host name"));
    }
    Ok(())
}

fn validate_path_component(c: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "name component {c:?} must be lower-case letters and digits, separated by '.', \
             '_', '__' or dashes"
        )
    };
    if c.is_empty() {
        return Err("the name has an empty component (check for '//' or a trailing '/')".into());
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// Validate a repository name and return its familiar form.
fn validate_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    let mut comps: Vec<&str> = name.split('/').collect();
    let domain = if comps.len() > 1 && is_domain(comps[0]) {
        let d = comps.remove(0);
        validate_domain(d)?;
        Some(d)
    } else {
        None
    };
    for c in &comps {
        if c.chars().any(|ch| ch.is_ascii_uppercase()) {
            return Err(format!("repository name {name:?} must be lower-case"));
        }
        validate_path_component(c)?;
    }
    // Familiar form: the default registry and its `library/` namespace are implied.
    let mut out = match domain {
        Some("docker.io") | Some("index.docker.io") | None => comps.join("/"),
        Some(d) => format!("{d}/{}", comps.join("/")),
    };
    if domain.is_none() || matches!(domain, Some("docker.io") | Some("index.docker.io")) {
        if let Some(short) = out.strip_prefix("library/") {
            if !short.contains('/') {
                out = short.to_string();
            }
        }
    }
    if out.len() > MAX_NAME_LEN {
        return Err(format!(
            "the repository name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn valid_references_normalize() {
        let d = format!("sha256:{HEX}");
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "busybox:latest".into()),
            ("busybox:1.36".into(), "busybox:1.36".into()),
            (
                "docker.io/library/busybox:latest".into(),
                "busybox:latest".into(),
            ),
            ("docker.io/foo/bar:v1".into(), "foo/bar:v1".into()),
            ("library/busybox".into(), "busybox:latest".into()),
            (
                "localhost:5000/team/app:v2".into(),
                "localhost:5000/team/app:v2".into(),
            ),
            (
                "registry.example.com/a/b/c".into(),
                "registry.example.com/a/b/c:latest".into(),
            ),
            (
                "my-app_x.y__z:V_1.0-rc".into(),
                "my-app_x.y__z:V_1.0-rc".into(),
            ),
            ("a--b".into(), "a--b:latest".into()),
            (format!("busybox@{d}"), format!("busybox@{d}")),
            (
                format!("docker.io/library/busybox@{d}"),
                format!("busybox@{d}"),
            ),
        ];
        for (input, want) in cases {
            let r = parse_reference(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.normalized(), want, "{input}");
            assert_eq!(r.tag.is_some(), r.digest.is_none(), "{input}");
        }
    }

    #[test]
    fn invalid_references_are_refused() {
        let cases = [
            ("", "empty"),
            ("Busybox", "lower-case"),
            ("busybox:", "empty"),
            ("busybox:-x", "tag"),
            ("busybox:a/b", "port"),
            ("bad name", "whitespace"),
            ("a//b", "empty component"),
            ("-abc", "name component"),
            ("abc-", "name component"),
            ("a..b", "name component"),
            ("a___b", "name component"),
            ("busybox@sha256:abc", "64"),
            ("busybox@md5:abc", "not supported"),
            ("busybox:1@sha256:0123", "64"),
            (
                "busybox:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "both a tag and a digest",
            ),
            ("host:port/x", "port"),
            ("-host.com/x", "host"),
        ];
        for (input, needle) in cases {
            let err = parse_reference(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
            assert!(!err.ends_with('.'), "{err}");
        }
    }

    #[test]
    fn digests_are_validated() {
        assert!(parse_digest(&format!("sha256:{HEX}")).is_ok());
        for bad in [
            "sha256:",
            HEX,
            "sha512:00",
            &format!("sha256:{}", HEX.to_uppercase()),
        ] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
    }
}
