//! Domain mappings: custom domains routed to services, as Cloud Run's Admin API v1 has them
//! (`domains.cloudrun.com/v1` `DomainMapping`, `gcloud beta run domain-mappings`).
//!
//! - [`mapping`]: the object, the domain name rules and the status (`Ready`,
//!   `CertificateProvisioned`, `DomainRoutable`, the DNS records to create), computed on read.
//! - [`DomainMappings`]: create, get, list, delete over the store's `objects` table (kind
//!   [`STORE_KIND`], namespace = project, name = domain); after every change, and at start-up,
//!   it hands the whole host table to the ingress through a callback.
//! - [`rest`]: the REST routes gcloud calls.
//!
//! A domain is mapped once across every project (one ingress serves them all).

pub mod error;
pub mod mapping;
pub mod rest;

pub use error::{DomainsError, Result};
pub use mapping::{DomainMapping, DomainMappingSpec, DomainMappingStatus, ResourceRecord};

use skiff_store::Store;
use skiff_tls::CertStore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The store's `objects` kind of a domain mapping.
pub const STORE_KIND: &str = "domain-mapping";

/// Mapped domain → `(project, service)`: what the ingress routes by `Host`.
pub type HostTable = HashMap<String, (String, String)>;

/// Receives the whole host table after every change (the ingress's route swap).
pub type PublishFn = Box<dyn Fn(HostTable) + Send + Sync>;

/// What the server tells domain mappings about itself.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The public addresses DNS records should point at (`A`/`AAAA`).
    pub addresses: Vec<IpAddr>,
    /// The ingress's HTTP port.
    pub http_port: u16,
    /// The ingress's HTTPS port, when it has an HTTPS listener.
    pub https_port: Option<u16>,
}

impl Settings {
    /// A mapping's URL: `https://DOMAIN` when a certificate is wanted and there is an HTTPS
    /// listener, else `http://DOMAIN`; with the port when it is not the scheme's default.
    pub fn url(&self, domain: &str, mode: &str) -> String {
        match self.https_port {
            Some(p) if mode == mapping::AUTOMATIC => with_port("https", domain, p, 443),
            _ => with_port("http", domain, self.http_port, 80),
        }
    }
}

fn with_port(scheme: &str, host: &str, port: u16, default: u16) -> String {
    if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// The domain mappings of every project.
pub struct DomainMappings {
    store: Arc<Store>,
    certs: Arc<CertStore>,
    settings: Settings,
    publish: PublishFn,
    /// Serializes changes, so that the once-per-domain check and the write are one step.
    changes: Mutex<()>,
}

impl DomainMappings {
    /// Loads the stored mappings and publishes their host table.
    ///
    /// Errors: [`DomainsError::Store`] when the store cannot be read.
    pub fn new(
        store: Arc<Store>,
        certs: Arc<CertStore>,
        settings: Settings,
        publish: PublishFn,
    ) -> Result<Arc<Self>> {
        let d = Arc::new(DomainMappings {
            store,
            certs,
            settings,
            publish,
            changes: Mutex::new(()),
        });
        d.publish_all()?;
        Ok(d)
    }

    fn all(&self) -> Result<Vec<DomainMapping>> {
        Ok(self.store.list_objects(STORE_KIND, None, None)?)
    }

    fn publish_all(&self) -> Result<()> {
        let table = self
            .all()?
            .into_iter()
            .map(|m| (m.metadata.name, (m.metadata.namespace, m.spec.route_name)))
            .collect();
        (self.publish)(table);
        Ok(())
    }

    /// `m` with its status as of now.
    fn observed(&self, mut m: DomainMapping) -> Result<DomainMapping> {
        let service = self
            .store
            .get_service(&m.metadata.namespace, &m.spec.route_name)?;
        let mode = mapping::certificate_mode(&m.spec).unwrap_or(mapping::AUTOMATIC);
        let url = self.settings.url(&m.metadata.name, mode);
        let status = mapping::status(
            &m,
            mapping::Observed {
                service: service.as_ref(),
                has_certificate: self.certs.covers(&m.metadata.name),
                addresses: &self.settings.addresses,
                url: &url,
            },
        );
        m.status = Some(status);
        Ok(m)
    }

    /// Maps `input.metadata.name` (the domain) to `input.spec.routeName` in project `ns`.
    ///
    /// Errors ([`DomainsError::InvalidArgument`] naming the field): an invalid domain, a
    /// missing or invalid `spec.routeName`, an unknown `spec.certificateMode`;
    /// [`DomainsError::FailedPrecondition`] when the service does not exist;
    /// [`DomainsError::AlreadyExists`] when the domain is mapped (in any project) and
    /// `spec.forceOverride` is not set; with it, the old mapping is replaced.
    pub fn create(&self, ns: &str, input: DomainMapping) -> Result<DomainMapping> {
        skiff_model::validate_namespace(ns).map_err(|e| DomainsError::invalid(e.0))?;
        let domain = input.metadata.name.clone();
        mapping::validate_domain(&domain).map_err(DomainsError::invalid)?;
        let service = input.spec.route_name.clone();
        if service.is_empty() {
            return Err(DomainsError::invalid(
                "spec.routeName: missing: name the service the domain goes to (--service)",
            ));
        }
        skiff_model::validate_service_name(&service)
            .map_err(|e| DomainsError::invalid(format!("spec.routeName: {}", e.0)))?;
        let mode = mapping::certificate_mode(&input.spec).map_err(DomainsError::invalid)?;
        if self.store.get_service(ns, &service)?.is_none() {
            return Err(DomainsError::FailedPrecondition(format!(
                "spec.routeName: service {service} not found in project {ns}: deploy it first (`skiff services list` shows the project's services)"
            )));
        }
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let existing = self.all()?.into_iter().find(|m| m.metadata.name == domain);
        if let Some(old) = &existing {
            if !input.spec.force_override {
                return Err(DomainsError::AlreadyExists(format!(
                    "metadata.name: {domain} is already mapped to service {} in project {}: delete that mapping first, or set spec.forceOverride (--force-override) to take the domain over",
                    old.spec.route_name, old.metadata.namespace
                )));
            }
        }
        let mut m = DomainMapping {
            api_version: mapping::API_VERSION.into(),
            kind: mapping::KIND.into(),
            metadata: input.metadata,
            spec: input.spec,
            status: None,
        };
        m.metadata.namespace = ns.to_string();
        m.metadata.uid = skiff_model::new_uuid();
        m.metadata.generation = 1;
        m.metadata.resource_version = "1".into();
        m.metadata.creation_timestamp =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        m.metadata.labels.insert(
            skiff_model::LABEL_LOCATION.into(),
            skiff_model::REGION.into(),
        );
        m.spec.certificate_mode = Some(mode.to_string());
        if let Some(old) = existing {
            self.store.delete_object(
                STORE_KIND,
                &old.metadata.namespace,
                &old.metadata.name,
                &[],
            )?;
        }
        self.store.put_object(STORE_KIND, ns, &domain, "", &m)?;
        self.publish_all()?;
        tracing::info!("domain {domain} mapped to service {service} in project {ns}");
        self.observed(m)
    }

    /// The mapping of `domain` in project `ns`, with its status.
    ///
    /// Errors: [`DomainsError::NotFound`].
    pub fn get(&self, ns: &str, domain: &str) -> Result<DomainMapping> {
        let m: Option<DomainMapping> = self.store.get_object(STORE_KIND, ns, domain)?;
        match m {
            Some(m) => self.observed(m),
            None => Err(DomainsError::NotFound {
                domain: domain.to_string(),
                project: ns.to_string(),
            }),
        }
    }

    /// The mappings of project `ns`, by domain, each with its status.
    pub fn list(&self, ns: &str) -> Result<Vec<DomainMapping>> {
        let mut v: Vec<DomainMapping> = self.store.list_objects(STORE_KIND, Some(ns), None)?;
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        v.into_iter().map(|m| self.observed(m)).collect()
    }

    /// Unmaps `domain` in project `ns`; the ingress stops routing it at once. Returns the
    /// mapping as it was.
    ///
    /// Errors: [`DomainsError::NotFound`].
    pub fn delete(&self, ns: &str, domain: &str) -> Result<DomainMapping> {
        let _guard = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let m = self.get(ns, domain)?;
        self.store.delete_object(STORE_KIND, ns, domain, &[])?;
        self.publish_all()?;
        tracing::info!("domain {domain} unmapped in project {ns}");
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{Condition, Service, ServiceStatus};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        certs: Arc<CertStore>,
        table: Arc<Mutex<HostTable>>,
        d: Arc<DomainMappings>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        for (ns, name) in [("default", "hello"), ("default", "other"), ("team", "api")] {
            let mut s = Service::default();
            s.metadata.name = name.into();
            s.metadata.namespace = ns.into();
            s.status = Some(ServiceStatus {
                conditions: vec![Condition::new("Ready", "True", None, None)],
                ..Default::default()
            });
            store.put_service(&s).unwrap();
        }
        let certs = CertStore::new();
        let table = Arc::new(Mutex::new(HostTable::new()));
        let t = table.clone();
        let d = DomainMappings::new(
            store.clone(),
            certs.clone(),
            Settings {
                addresses: vec!["203.0.113.7".parse().unwrap()],
                http_port: 80,
                https_port: Some(443),
            },
            Box::new(move |new| *t.lock().unwrap() = new),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            store,
            certs,
            table,
            d,
        }
    }

    fn input(domain: &str, service: &str, force: bool) -> DomainMapping {
        let mut m = DomainMapping::default();
        m.metadata.name = domain.into();
        m.spec.route_name = service.into();
        m.spec.force_override = force;
        m
    }

    fn ready(m: &DomainMapping, t: &str) -> String {
        let c = m
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap();
        format!("{}/{}", c.status, c.reason.clone().unwrap_or_default())
    }

    #[test]
    fn create_validates_and_publishes() {
        let f = fixture();
        let errors: &[(&str, DomainMapping, &str)] = &[
            (
                "bad domain",
                input("Bad..com", "hello", false),
                "metadata.name: ",
            ),
            (
                "no service",
                input("a.example.com", "", false),
                "spec.routeName: missing",
            ),
            (
                "missing service",
                input("a.example.com", "nope", false),
                "spec.routeName: service nope not found in project default",
            ),
            (
                "bad mode",
                {
                    let mut m = input("a.example.com", "hello", false);
                    m.spec.certificate_mode = Some("MANUAL".into());
                    m
                },
                "spec.certificateMode: ",
            ),
        ];
        for (what, m, want) in errors {
            let e = f.d.create("default", m.clone()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{what}: {e}");
        }
        assert!(
            f.d.list("default").unwrap().is_empty(),
            "errors change nothing"
        );

        let m =
            f.d.create("default", input("www.example.com", "hello", false))
                .unwrap();
        assert_eq!(m.metadata.namespace, "default");
        assert_eq!(m.spec.certificate_mode.as_deref(), Some("AUTOMATIC"));
        let s = m.status.as_ref().unwrap();
        assert_eq!(s.url.as_deref(), Some("https://www.example.com"));
        assert_eq!(s.resource_records[0].rrdata, "203.0.113.7");
        assert_eq!(
            ready(&m, "CertificateProvisioned"),
            "Unknown/CertificatePending"
        );
        assert_eq!(
            f.table.lock().unwrap().get("www.example.com"),
            Some(&("default".to_string(), "hello".to_string()))
        );

        // A certificate for the domain (or its wildcard) makes it Ready.
        let key = rcgen::generate_simple_self_signed(vec!["*.example.com".into()]).unwrap();
        let ck = skiff_tls::certified_key_from_pem(
            key.cert.pem().as_bytes(),
            key.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        f.certs.insert("*.example.com", Arc::new(ck));
        let m = f.d.get("default", "www.example.com").unwrap();
        assert_eq!(ready(&m, "CertificateProvisioned"), "True/");
        assert_eq!(ready(&m, "Ready"), "True/");

        // Once per domain, across projects, unless forced.
        let e =
            f.d.create("team", input("www.example.com", "api", false))
                .unwrap_err();
        assert!(matches!(e, DomainsError::AlreadyExists(_)), "{e}");
        assert!(
            e.to_string().contains("service hello in project default"),
            "{e}"
        );
        f.d.create("team", input("www.example.com", "api", true))
            .unwrap();
        assert!(f.d.list("default").unwrap().is_empty());
        assert_eq!(f.d.list("team").unwrap().len(), 1);
        assert_eq!(
            f.table.lock().unwrap().get("www.example.com"),
            Some(&("team".to_string(), "api".to_string()))
        );

        // A deleted service leaves the mapping, not ready, with the reason.
        f.store.delete_service("team", "api").unwrap();
        let m = f.d.get("team", "www.example.com").unwrap();
        assert_eq!(ready(&m, "Ready"), "False/RouteNotReady");
        assert!(m.status.as_ref().unwrap().mapped_route_name.is_none());

        let gone = f.d.delete("team", "www.example.com").unwrap();
        assert_eq!(gone.metadata.name, "www.example.com");
        assert!(f.table.lock().unwrap().is_empty());
        assert!(matches!(
            f.d.delete("team", "www.example.com"),
            Err(DomainsError::NotFound { .. })
        ));
    }

    #[test]
    fn table_survives_restart() {
        let f = fixture();
        let mut m = input("api.example.org", "other", false);
        m.spec.certificate_mode = Some("NONE".into());
        f.d.create("default", m).unwrap();
        let table = Arc::new(Mutex::new(HostTable::new()));
        let t = table.clone();
        let again = DomainMappings::new(
            f.store.clone(),
            f.certs.clone(),
            Settings {
                addresses: vec![],
                http_port: 8080,
                https_port: None,
            },
            Box::new(move |new| *t.lock().unwrap() = new),
        )
        .unwrap();
        assert_eq!(table.lock().unwrap().len(), 1);
        let m = again.get("default", "api.example.org").unwrap();
        let s = m.status.as_ref().unwrap();
        assert_eq!(s.url.as_deref(), Some("http://api.example.org:8080"));
        assert_eq!(ready(&m, "Ready"), "False/NoPublicAddress");
    }
}
