//! Domain mappings end to end with the `skiff` CLI: a custom domain routed to a service by the
//! ingress (with or without a port in `Host`), private services reached with a token for the
//! service's URL or the domain's, the DNS records and conditions in status, bad input refused by
//! name with nothing changed, a deleted service leaving its mapping not ready, and mappings kept
//! across a restart.

use serde_json::Value;
use skiff_testkit::TestServer;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn condition(m: &Value, t: &str) -> (String, String) {
    let c = m["status"]["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions: {m}"))
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t}: {m}"));
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn describe(s: &TestServer, domain: &str) -> Value {
    let out = s.ok(&[
        "domain-mappings",
        "describe",
        "--domain",
        domain,
        "--format",
        "json",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn domain_mappings_route_report_and_survive_a_restart() {
    let (mut s, _tmp) = TestServer::with_web_image(
        Path::new(BIN),
        &["--public-address", "203.0.113.7,2001:db8::7"],
    );
    s.deploy_web("site", &[]);
    s.ok(&["deploy", "vault", "--image", "web"]);
    let domain = "www.example.com";
    assert_eq!(s.get(domain, "/", None).0, 404, "not mapped yet");

    // Bad input is refused by name and changes nothing.
    let cases: &[(&[&str], &str)] = &[
        (
            &["--service", "site", "--domain", "Bad_Domain"],
            "--domain: \"Bad_Domain\" is not a valid domain name",
        ),
        (
            &["--service", "nope", "--domain", domain],
            "spec.routeName: service nope not found in project default",
        ),
        (
            &["--service", "site", "--domain", "app.localhost"],
            "names under localhost are Skiff's own service URLs",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["domain-mappings", "create"];
        a.extend_from_slice(args);
        let err = s.fails(&a);
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
    assert!(s
        .ok(&["domain-mappings", "list", "--format", "json"])
        .contains("\"items\": []"));

    // Create: the DNS records to make, in gcloud's table.
    let out = s.ok(&[
        "domain-mappings",
        "create",
        "--service",
        "site",
        "--domain",
        domain,
    ]);
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["NAME", "RECORD", "TYPE", "CONTENTS"], "{out}");
    assert_eq!(lines[1], [domain, "A", "203.0.113.7"], "{out}");
    assert_eq!(lines[2], [domain, "AAAA", "2001:db8::7"], "{out}");

    // The ingress routes the domain to the service, with or without a port, in any case.
    for host in [
        domain.to_string(),
        format!("{domain}:{}", s.ingress),
        "WWW.Example.COM".to_string(),
    ] {
        let (code, body) = s.get(&host, "/cgi-bin/env", None);
        assert_eq!(code, 200, "{host}: {body}");
        assert!(
            body.contains(&format!("HTTP_HOST={host}")),
            "{host}: {body}"
        );
    }
    assert_eq!(
        s.get("example.com", "/", None).0,
        404,
        "only the mapped name"
    );

    // Status: routable, the certificate pending (no HTTPS certificate for it), not yet Ready.
    let m = describe(&s, domain);
    assert_eq!(m["apiVersion"], "domains.cloudrun.com/v1");
    assert_eq!(m["kind"], "DomainMapping");
    assert_eq!(m["spec"]["routeName"], "site");
    assert_eq!(m["spec"]["certificateMode"], "AUTOMATIC");
    assert_eq!(m["status"]["mappedRouteName"], "site");
    assert_eq!(condition(&m, "DomainRoutable").0, "True");
    assert_eq!(
        condition(&m, "CertificateProvisioned"),
        ("Unknown".into(), "CertificatePending".into())
    );
    assert_eq!(condition(&m, "Ready").0, "Unknown");
    let text = s.ok(&["domain-mappings", "describe", "--domain", domain]);
    assert!(text.contains("CertificatePending"), "{text}");
    let export = s.ok(&[
        "domain-mappings",
        "describe",
        "--domain",
        domain,
        "--format",
        "export",
    ]);
    assert!(
        !export.contains("status") && !export.contains("uid"),
        "{export}"
    );
    assert!(export.contains("routeName: site"), "{export}");

    // Without a certificate wanted, the mapping is Ready.
    let plain = "plain.example.org";
    s.ok(&[
        "domain-mappings",
        "create",
        "--service",
        "vault",
        "--domain",
        plain,
        "--certificate-mode",
        "NONE",
    ]);
    let m = describe(&s, plain);
    assert_eq!(condition(&m, "Ready"), ("True".into(), String::new()));
    assert_eq!(
        m["status"]["url"].as_str().unwrap(),
        format!("http://{plain}:{}", s.ingress)
    );

    // A private service needs its token; the domain's URL is an audience too.
    assert_eq!(s.get(plain, "/", None).0, 401);
    let for_domain = s.ok(&[
        "auth",
        "print-identity-token",
        "--audience",
        &format!("https://{plain}/"),
    ]);
    assert_eq!(s.get(plain, "/", Some(for_domain.trim())).0, 200);
    let for_service = s.ok(&[
        "auth",
        "print-identity-token",
        "--audience",
        &format!("http://vault.localhost:{}", s.ingress),
    ]);
    assert_eq!(s.get(plain, "/", Some(for_service.trim())).0, 200);
    let for_other = s.ok(&[
        "auth",
        "print-identity-token",
        "--audience",
        &format!("https://{domain}/"),
    ]);
    assert_eq!(s.get(plain, "/", Some(for_other.trim())).0, 403);

    // Mapped once: a second mapping is refused unless forced.
    let err = s.fails(&[
        "domain-mappings",
        "create",
        "--service",
        "vault",
        "--domain",
        domain,
    ]);
    assert!(
        err.contains("already mapped to service site") && err.contains("--force-override"),
        "{err}"
    );
    assert_eq!(
        describe(&s, domain)["spec"]["routeName"],
        "site",
        "unchanged"
    );
    s.ok(&[
        "domain-mappings",
        "create",
        "--service",
        "vault",
        "--domain",
        domain,
        "--force-override",
    ]);
    assert_eq!(s.get(domain, "/", None).0, 401, "now the private service's");
    let list = s.ok(&["domain-mappings", "list"]);
    assert!(list.contains(plain) && list.contains(domain), "{list}");

    // Survives a restart.
    assert_eq!(s.stop(), Some(0));
    s.restart();
    let list: Value =
        serde_json::from_str(&s.ok(&["domain-mappings", "list", "--format", "json"])).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(s.get(plain, "/", Some(for_domain.trim())).0, 200);

    // Deleting the service leaves the mapping, not ready, saying why.
    s.ok(&["services", "delete", "vault"]);
    let m = describe(&s, plain);
    assert_eq!(
        condition(&m, "Ready"),
        ("False".into(), "RouteNotReady".into())
    );
    assert!(m["status"]["mappedRouteName"].is_null(), "{m}");
    assert_eq!(s.get(plain, "/", None).0, 404);

    for d in [domain, plain] {
        s.ok(&["domain-mappings", "delete", "--domain", d]);
    }
    assert_eq!(s.get(domain, "/", None).0, 404);
    let err = s.fails(&["domain-mappings", "describe", "--domain", domain]);
    assert!(
        err.contains("domain mapping www.example.com not found"),
        "{err}"
    );
}
