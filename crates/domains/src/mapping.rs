//! The `domains.cloudrun.com/v1` `DomainMapping` object as Cloud Run's Admin API v1 has it
//! (`namespaces.domainmappings`), the rules a domain name must follow, and the status computed
//! from what exists now: the mapped service, the certificate store and the server's addresses.
//!
//! No I/O here: [`status`] is a pure function of its inputs, so every condition can be tested
//! with data.

use serde::{Deserialize, Serialize};
use skiff_model::{Condition, ObjectMeta, Service};
use std::net::IpAddr;

/// `apiVersion` of a DomainMapping.
pub const API_VERSION: &str = "domains.cloudrun.com/v1";
/// `kind` of a DomainMapping.
pub const KIND: &str = "DomainMapping";
/// `spec.certificateMode` when a certificate is provisioned for the domain (the default).
pub const AUTOMATIC: &str = "AUTOMATIC";
/// `spec.certificateMode` when no certificate is wanted: the domain is served over HTTP.
pub const NONE: &str = "NONE";

/// Condition reasons, Cloud Run's (its v2 API's `DomainMappingReason` names).
pub mod reason {
    /// The mapped service does not exist or is not ready.
    pub const ROUTE_NOT_READY: &str = "RouteNotReady";
    /// The domain is mapped in another project (or to another service) already.
    pub const MAPPING_ALREADY_EXISTS: &str = "MappingAlreadyExists";
    /// No certificate for the domain yet.
    pub const CERTIFICATE_PENDING: &str = "CertificatePending";
    /// `certificateMode: NONE`: the domain needs no certificate (Knative's reason).
    pub const CERTIFICATE_NOT_REQUIRED: &str = "CertificateNotRequired";
    /// The server cannot tell what DNS records to ask for.
    pub const NO_PUBLIC_ADDRESS: &str = "NoPublicAddress";
}

/// A custom domain routed to a service. `metadata.name` is the domain, `metadata.namespace` the
/// project; `status` is the server's, computed on every read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMapping {
    /// `domains.cloudrun.com/v1`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// `DomainMapping`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Name (the domain), namespace (the project), labels, annotations; uid, generation and
    /// creation time are the server's.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the user asked for.
    #[serde(default)]
    pub spec: DomainMappingSpec,
    /// What is so now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DomainMappingStatus>,
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn kind() -> String {
    KIND.to_string()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `spec` of a DomainMapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainMappingSpec {
    /// The service (Knative route) the domain goes to, in the mapping's project.
    #[serde(default)]
    pub route_name: String,
    /// `AUTOMATIC` (the default; also for `CERTIFICATE_MODE_UNSPECIFIED`) or `NONE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_mode: Option<String>,
    /// Take the domain over even if another mapping has it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force_override: bool,
}

/// `status` of a DomainMapping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappingStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: u64,
    /// `Ready`, `CertificateProvisioned`, `DomainRoutable`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The service the domain routes to, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_route_name: Option<String>,
    /// `https://DOMAIN` (or `http://` with `certificateMode: NONE`), with the ingress's port
    /// when it is not the scheme's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The DNS records to create so that the domain reaches this server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_records: Vec<ResourceRecord>,
}

/// One DNS record to create (Cloud Run's `ResourceRecord`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// The record's owner name: the mapped domain.
    #[serde(default)]
    pub name: String,
    /// The record's data: an IPv4 address (`A`), an IPv6 address (`AAAA`).
    #[serde(default)]
    pub rrdata: String,
    /// `A` or `AAAA`.
    #[serde(rename = "type", default)]
    pub type_: String,
}

/// The certificate mode a spec asks for, or an error naming `spec.certificateMode`.
pub fn certificate_mode(spec: &DomainMappingSpec) -> Result<&'static str, String> {
    match spec.certificate_mode.as_deref() {
        None | Some("") | Some("AUTOMATIC") | Some("CERTIFICATE_MODE_UNSPECIFIED") => Ok(AUTOMATIC),
        Some("NONE") => Ok(NONE),
        Some(other) => Err(format!(
            "spec.certificateMode: {other:?} is not a certificate mode: use AUTOMATIC or NONE"
        )),
    }
}

/// Checks a domain to map (RFC 1123 host name rules, as Cloud Run's `metadata.name`): at most
/// 253 characters, at least two dot-separated labels of 1–63 lower-case letters, digits and
/// `-` (not at a label's ends), a top-level label that is not all digits (an IP address is no
/// domain), and not under `localhost`, where Skiff's own service URLs are.
///
/// Errors name the field: `metadata.name: "Example.com" is not a valid domain name: ...`.
pub fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "metadata.name: {domain:?} is not a valid domain name: {why}"
        ))
    };
    if domain.is_empty() {
        return Err("metadata.name: missing: give the domain to map, like www.example.com".into());
    }
    if domain.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    if domain.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("use lower case");
    }
    if domain.starts_with("*.") {
        return bad("wildcard domains cannot be mapped: map each host name");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return bad("give a full domain with at least two labels, like www.example.com");
    }
    for l in &labels {
        if l.is_empty() {
            return bad("it has an empty label (two dots in a row, or a leading or trailing dot)");
        }
        if l.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !l
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return bad("use only letters, digits, '-' and '.'");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    let tld = labels[labels.len() - 1];
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return bad("an IP address is not a domain");
    }
    if tld == "localhost" {
        return bad("names under localhost are Skiff's own service URLs");
    }
    Ok(())
}

/// The DNS records that point `domain` at `addresses`: one `A` per IPv4 and one `AAAA` per
/// IPv6 address.
pub fn records(domain: &str, addresses: &[IpAddr]) -> Vec<ResourceRecord> {
    addresses
        .iter()
        .map(|a| ResourceRecord {
            name: domain.to_string(),
            rrdata: a.to_string(),
            type_: if a.is_ipv4() { "A" } else { "AAAA" }.to_string(),
        })
        .collect()
}

/// What a mapping's status depends on, read by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The mapped service as stored, if it exists.
    pub service: Option<&'a Service>,
    /// Whether the certificate store has a certificate of the domain's own (exact or
    /// wildcard, not the default one).
    pub has_certificate: bool,
    /// The server's public addresses, for the DNS records.
    pub addresses: &'a [IpAddr],
    /// The mapping's URL.
    pub url: &'a str,
}

/// The status of `m` given what exists now (`Ready` is `True` once `DomainRoutable` and
/// `CertificateProvisioned` are; `False` if either is; else `Unknown` with the first pending
/// one's reason).
pub fn status(m: &DomainMapping, now: Observed<'_>) -> DomainMappingStatus {
    let domain = &m.metadata.name;
    let service = &m.spec.route_name;
    let project = &m.metadata.namespace;
    let routable = match now.service {
        None => Condition::new(
            "DomainRoutable",
            "False",
            Some(reason::ROUTE_NOT_READY),
            Some(format!(
                "service {service} does not exist in project {project}: deploy it, or delete this mapping and map {domain} to another service"
            )),
        ),
        Some(svc) => {
            let ready = svc
                .status
                .as_ref()
                .and_then(|s| skiff_model::ready_status(&s.conditions))
                .map(|c| c.status.as_str());
            match ready {
                Some("True") => Condition::new("DomainRoutable", "True", None, None),
                Some("False") => Condition::new(
                    "DomainRoutable",
                    "False",
                    Some(reason::ROUTE_NOT_READY),
                    Some(format!(
                        "service {service} is not ready: `skiff services describe {service}` says why"
                    )),
                ),
                _ => Condition::new(
                    "DomainRoutable",
                    "Unknown",
                    Some(reason::ROUTE_NOT_READY),
                    Some(format!("service {service} is not ready yet")),
                ),
            }
        }
    };
    let mode = certificate_mode(&m.spec).unwrap_or(AUTOMATIC);
    let certificate = if mode == NONE {
        Condition::new(
            "CertificateProvisioned",
            "True",
            Some(reason::CERTIFICATE_NOT_REQUIRED),
            Some(format!(
                "certificateMode is NONE: {domain} is served over HTTP only"
            )),
        )
    } else if now.has_certificate {
        Condition::new("CertificateProvisioned", "True", None, None)
    } else {
        Condition::new(
            "CertificateProvisioned",
            "Unknown",
            Some(reason::CERTIFICATE_PENDING),
            Some(format!(
                "waiting for a certificate for {domain}: with ACME on (skiff server --https and --acme-directory) it is obtained once the DNS records point {domain} at this server; otherwise give the server a --tls-cert that covers it, or use --certificate-mode NONE"
            )),
        )
    };
    let resource_records = records(domain, now.addresses);
    let mut parts = vec![routable, certificate];
    if resource_records.is_empty() {
        parts.push(Condition::new(
            "Ready",
            "False",
            Some(reason::NO_PUBLIC_ADDRESS),
            Some("the server does not know its public address: start it with --public-address IP so that it can say which DNS records to create".into()),
        ));
    }
    let ready = if let Some(c) = parts.iter().find(|c| c.status == "False") {
        Condition::new("Ready", "False", c.reason.as_deref(), c.message.clone())
    } else if let Some(c) = parts.iter().find(|c| c.status != "True") {
        Condition::new("Ready", "Unknown", c.reason.as_deref(), c.message.clone())
    } else {
        Condition::new("Ready", "True", None, None)
    };
    parts.retain(|c| c.type_ != "Ready");
    let mut conditions = vec![ready];
    conditions.extend(parts);
    DomainMappingStatus {
        observed_generation: m.metadata.generation,
        conditions,
        mapped_route_name: now.service.map(|_| service.clone()),
        url: Some(now.url.to_string()),
        resource_records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        let cases: &[(&str, Option<&str>)] = &[
            ("www.example.com", None),
            ("example.com", None),
            ("a-b.c1.example.org", None),
            ("xn--bcher-kva.example", None),
            ("", Some("missing")),
            ("example", Some("at least two labels")),
            ("Example.com", Some("lower case")),
            ("*.example.com", Some("wildcard")),
            ("a..example.com", Some("empty label")),
            ("example.com.", Some("empty label")),
            ("-a.example.com", Some("starts or ends with '-'")),
            ("a_b.example.com", Some("only letters")),
            ("10.0.0.1", Some("IP address")),
            ("hello.localhost", Some("localhost")),
            ("example.com:8080", Some("only letters")),
        ];
        for (domain, want) in cases {
            let got = validate_domain(domain);
            match want {
                None => assert_eq!(got, Ok(()), "{domain}"),
                Some(w) => {
                    let e = got.expect_err(domain);
                    assert!(e.starts_with("metadata.name: "), "{domain}: {e}");
                    assert!(e.contains(w), "{domain}: {e}");
                }
            }
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(validate_domain(&long).unwrap_err().contains("63"));
        let very_long = format!("{}com", "abcdefghi.".repeat(26));
        assert!(validate_domain(&very_long).unwrap_err().contains("253"));
    }

    #[test]
    fn certificate_modes() {
        let spec = |m: Option<&str>| DomainMappingSpec {
            certificate_mode: m.map(String::from),
            ..Default::default()
        };
        assert_eq!(certificate_mode(&spec(None)), Ok(AUTOMATIC));
        assert_eq!(certificate_mode(&spec(Some("AUTOMATIC"))), Ok(AUTOMATIC));
        assert_eq!(
            certificate_mode(&spec(Some("CERTIFICATE_MODE_UNSPECIFIED"))),
            Ok(AUTOMATIC)
        );
        assert_eq!(certificate_mode(&spec(Some("NONE"))), Ok(NONE));
        assert!(certificate_mode(&spec(Some("MANUAL")))
            .unwrap_err()
            .starts_with("spec.certificateMode: "));
    }

    fn service(ready: Option<&str>) -> Service {
        let mut s = Service::default();
        s.metadata.name = "hello".into();
        if let Some(r) = ready {
            s.status = Some(skiff_model::ServiceStatus {
                conditions: vec![Condition::new("Ready", r, None, None)],
                ..Default::default()
            });
        }
        s
    }

    fn cond<'a>(s: &'a DomainMappingStatus, t: &str) -> (&'a str, Option<&'a str>) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} condition in {s:?}"));
        (c.status.as_str(), c.reason.as_deref())
    }

    #[test]
    fn statuses() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let ready = service(Some("True"));
        let failed = service(Some("False"));
        let deploying = service(None);
        type Want = (
            (&'static str, Option<&'static str>),
            (&'static str, Option<&'static str>),
            (&'static str, Option<&'static str>),
        );
        type Case<'a> = (
            &'a str,
            Option<&'a Service>,
            Option<&'a str>,
            bool,
            Vec<IpAddr>,
            Want,
        );
        // (what, service, mode, has certificate, addresses) → (Ready, DomainRoutable,
        // CertificateProvisioned)
        let cases: Vec<Case> = vec![
            (
                "all there",
                Some(&ready),
                None,
                true,
                vec![v4],
                (("True", None), ("True", None), ("True", None)),
            ),
            (
                "certificate pending",
                Some(&ready),
                None,
                false,
                vec![v4],
                (
                    ("Unknown", Some("CertificatePending")),
                    ("True", None),
                    ("Unknown", Some("CertificatePending")),
                ),
            ),
            (
                "no certificate wanted",
                Some(&ready),
                Some("NONE"),
                false,
                vec![v4],
                (
                    ("True", None),
                    ("True", None),
                    ("True", Some("CertificateNotRequired")),
                ),
            ),
            (
                "service deleted",
                None,
                None,
                true,
                vec![v4],
                (
                    ("False", Some("RouteNotReady")),
                    ("False", Some("RouteNotReady")),
                    ("True", None),
                ),
            ),
            (
                "service failed",
                Some(&failed),
                Some("NONE"),
                false,
                vec![v4],
                (
                    ("False", Some("RouteNotReady")),
                    ("False", Some("RouteNotReady")),
                    ("True", Some("CertificateNotRequired")),
                ),
            ),
            (
                "service deploying",
                Some(&deploying),
                None,
                true,
                vec![v4],
                (
                    ("Unknown", Some("RouteNotReady")),
                    ("Unknown", Some("RouteNotReady")),
                    ("True", None),
                ),
            ),
            (
                "no address",
                Some(&ready),
                None,
                true,
                vec![],
                (
                    ("False", Some("NoPublicAddress")),
                    ("True", None),
                    ("True", None),
                ),
            ),
        ];
        for (what, svc, mode, cert, addrs, (r, d, c)) in cases {
            let mut m = DomainMapping::default();
            m.metadata.name = "www.example.com".into();
            m.metadata.namespace = "default".into();
            m.metadata.generation = 1;
            m.spec.route_name = "hello".into();
            m.spec.certificate_mode = mode.map(String::from);
            let s = status(
                &m,
                Observed {
                    service: svc,
                    has_certificate: cert,
                    addresses: &addrs,
                    url: "https://www.example.com",
                },
            );
            assert_eq!(s.conditions[0].type_, "Ready", "{what}");
            assert_eq!(cond(&s, "Ready"), r, "{what}");
            assert_eq!(cond(&s, "DomainRoutable"), d, "{what}");
            assert_eq!(cond(&s, "CertificateProvisioned"), c, "{what}");
            assert_eq!(s.conditions.len(), 3, "{what}");
            assert_eq!(s.observed_generation, 1);
            assert_eq!(
                s.mapped_route_name.as_deref(),
                svc.map(|_| "hello"),
                "{what}"
            );
        }
        assert_eq!(
            records("www.example.com", &[v4, v6]),
            [
                ResourceRecord {
                    name: "www.example.com".into(),
                    rrdata: "203.0.113.7".into(),
                    type_: "A".into()
                },
                ResourceRecord {
                    name: "www.example.com".into(),
                    rrdata: "2001:db8::7".into(),
                    type_: "AAAA".into()
                },
            ]
        );
    }
}
