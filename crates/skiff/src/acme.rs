//! `skiff server`'s ACME flags and their start-up: an [`AcmeManager`] over the ingress's
//! certificate store, ordering a certificate for each host the ingress routes when a service's
//! route is set and when a TLS handshake names a routed host that has none, renewing on its
//! own schedule and on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use anyhow::bail;
use skiff_acme::{AcmeConfig, AcmeManager, ChallengeKind, HostFilter};
use skiff_serving::Serving;

/// The ACME settings of `skiff server`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AcmeArgs {
    /// Obtain certificates for the hosts the ingress routes from this ACME CA's directory,
    /// e.g. https://acme-v02.api.letsencrypt.org/directory; needs --https. HTTP-01 is answered
    /// on --http (the CA connects to port 80), TLS-ALPN-01 on --https (port 443).
    #[arg(long, value_name = "URL")]
    pub acme_directory: Option<String>,
    /// The contact address of the ACME account (the CA's expiry notices go there).
    #[arg(long, value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// PEM certificates of the CA that signs the ACME directory's own HTTPS (a private CA);
    /// replaces the system's roots for talking to the directory.
    #[arg(long, value_name = "FILE")]
    pub acme_ca: Option<PathBuf>,
    /// A command that publishes DNS-01 TXT records, run as `CMD set NAME VALUE` (it must exit
    /// 0 once the record is live) and `CMD clear NAME VALUE`; needs --domain, and gets one
    /// wildcard certificate for `*.DOMAIN` instead of one per service host.
    #[arg(long, value_name = "CMD")]
    pub acme_dns_hook: Option<PathBuf>,
}

impl AcmeArgs {
    /// Checks the flags before anything starts; `https` and `domain` say whether `--https`
    /// and `--domain` were given.
    pub fn check(&self, https: bool, domain: bool) -> anyhow::Result<()> {
        let Some(dir) = &self.acme_directory else {
            for (given, flag) in [
                (self.acme_email.is_some(), "--acme-email"),
                (self.acme_ca.is_some(), "--acme-ca"),
                (self.acme_dns_hook.is_some(), "--acme-dns-hook"),
            ] {
                if given {
                    bail!("{flag} needs --acme-directory URL (the ACME CA's directory)");
                }
            }
            return Ok(());
        };
        if !dir.starts_with("https://") {
            bail!("--acme-directory {dir:?} is not an https:// URL; give the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory");
        }
        if !https {
            bail!("--acme-directory needs --https ADDR (e.g. --https 0.0.0.0:443) to serve the certificates on");
        }
        if let Some(email) = &self.acme_email {
            let ok = email.split_once('@').is_some_and(|(u, d)| {
                !u.is_empty() && d.contains('.') && !email.contains(char::is_whitespace)
            });
            if !ok {
                bail!("--acme-email {email:?} is not an email address (like ops@example.com)");
            }
        }
        if let Some(ca) = &self.acme_ca {
            if !ca.is_file() {
                bail!("--acme-ca {}: no such file; give the PEM file of the CA that signs the directory's HTTPS", ca.display());
            }
        }
        if let Some(hook) = &self.acme_dns_hook {
            use std::os::unix::fs::PermissionsExt;
            let executable = std::fs::metadata(hook)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !executable {
                bail!("--acme-dns-hook {}: not an executable file", hook.display());
            }
            if !domain {
                bail!("--acme-dns-hook needs --domain DOMAIN (the wildcard *.DOMAIN it obtains)");
            }
        }
        Ok(())
    }
}

/// Starts ACME for the ingress of `serving` when `--acme-directory` is given: loads the
/// certificates stored under `DATA/acme/` into the store, hooks ordering into route changes
/// and handshakes, and starts the renewal check.
pub fn start(
    args: &AcmeArgs,
    data_dir: &Path,
    serving: &Arc<Serving>,
) -> anyhow::Result<Option<Arc<AcmeManager>>> {
    let Some(directory) = &args.acme_directory else {
        return Ok(None);
    };
    // With the DNS hook, one `*.DOMAIN` certificate covers every service URL (each is one
    // label under the domain), so the wildcard is ordered instead of them; routed hosts it
    // does not cover (mapped custom domains) still get their own, by HTTP-01 or TLS-ALPN-01.
    let wildcard = match (&args.acme_dns_hook, serving.urls().domain()) {
        (Some(_), Some(domain)) => Some(format!("*.{domain}")),
        _ => None,
    };
    let weak: Weak<Serving> = Arc::downgrade(serving);
    let w = wildcard.clone();
    let filter: HostFilter = Arc::new(move |host: &str| {
        let routed = || weak.upgrade().is_some_and(|s| s.routes_host(host));
        match &w {
            Some(w) => {
                let under_wildcard = host
                    .split_once('.')
                    .is_some_and(|(_, parent)| Some(parent) == w.strip_prefix("*."));
                host == w || (!under_wildcard && routed())
            }
            None => routed(),
        }
    });
    let mut cfg = AcmeConfig::new(directory.clone(), data_dir.join("acme"));
    cfg.email = args.acme_email.clone();
    cfg.ca_bundle = args.acme_ca.clone();
    cfg.challenges = vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01];
    cfg.dns_hook = args.acme_dns_hook.clone();
    let manager = AcmeManager::new(
        cfg,
        serving.certs().clone(),
        serving.http01().clone(),
        filter,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let loaded = manager.load_stored();
    tracing::info!(directory, loaded = loaded.len(), "ACME certificates loaded");

    let m = Arc::downgrade(&manager);
    serving
        .certs()
        .set_on_miss(Some(Arc::new(move |host: &str| {
            if let Some(m) = m.upgrade() {
                m.want(host);
            }
        })));
    let m = Arc::downgrade(&manager);
    serving.set_route_hook(Some(Arc::new(move |hosts: &[String]| {
        if let Some(m) = m.upgrade() {
            for h in hosts {
                m.want(h);
            }
        }
    })));
    if let Some(w) = &wildcard {
        manager.want(w);
    }
    manager.spawn_renewals();
    spawn_sighup_renewal(&manager)?;
    Ok(Some(manager))
}

/// SIGHUP renews every ACME certificate now (`systemctl reload skiff`, `kill -HUP`).
fn spawn_sighup_renewal(manager: &Arc<AcmeManager>) -> anyhow::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let m = Arc::downgrade(manager);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(m) = m.upgrade() else { break };
            let hosts = m.renew_all_now();
            tracing::info!(?hosts, "SIGHUP: renewing ACME certificates");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: Option<&str>) -> AcmeArgs {
        AcmeArgs {
            acme_directory: dir.map(str::to_owned),
            ..AcmeArgs::default()
        }
    }

    #[test]
    fn flags_are_checked() {
        let ok = "https://acme.example.com/directory";
        assert!(args(None).check(false, true).is_ok());
        assert!(args(Some(ok)).check(true, true).is_ok());
        let err = |a: AcmeArgs, https: bool| a.check(https, true).unwrap_err().to_string();
        assert!(err(args(Some(ok)), false).contains("needs --https"));
        assert!(err(args(Some("http://acme.example.com/dir")), true).contains("https://"));
        let mut a = args(None);
        a.acme_email = Some("ops@example.com".into());
        assert!(err(a.clone(), true).contains("--acme-email needs --acme-directory"));
        a.acme_directory = Some(ok.into());
        assert!(a.check(true, true).is_ok());
        a.acme_email = Some("not an address".into());
        assert!(err(a.clone(), true).contains("not an email address"));
        a.acme_email = None;
        a.acme_ca = Some("/nonexistent/ca.pem".into());
        assert!(err(a.clone(), true).contains("no such file"));
        a.acme_ca = None;
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        a.acme_dns_hook = Some(hook.clone());
        assert!(err(a.clone(), true).contains("not an executable"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(a.check(true, true).is_ok());
        let no_domain = a.check(true, false).unwrap_err().to_string();
        assert!(no_domain.contains("needs --domain"), "{no_domain}");
    }
}
