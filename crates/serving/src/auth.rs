//! Identity tokens for private services: HS256 JWTs signed with a key that only the server
//! holds (`DATA/signing.key`), minted by the API for the admin (`skiff auth
//! print-identity-token`) and verified on the request path without any I/O.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

const ISSUER: &str = "skiff";
/// The subject of the admin's tokens (`skiff auth print-identity-token`): the project's
/// owner, who may invoke every service.
pub const ADMIN_SUBJECT: &str = "admin";
/// Identity tokens live an hour, as Google's do.
const LIFETIME_SECS: i64 = 3600;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    iat: i64,
    exp: i64,
}

pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No token at all: 401.
    Missing,
    /// A token that is not valid for this service: 403.
    Denied(String),
}

impl TokenKeys {
    pub fn new(secret: &[u8]) -> Self {
        TokenKeys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }

    pub fn mint(&self, subject: &str, audience: Option<&str>) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: audience.map(String::from),
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing cannot fail")
    }

    /// The subject of an unexpired token signed by this server (whatever its audience), or
    /// `None` for any other token.
    pub fn subject_of(&self, token: &str) -> Option<String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.validate_aud = false;
        v.leeway = 5;
        decode::<Claims>(token, &self.dec, &v)
            .ok()
            .map(|d| d.claims.sub)
    }

    /// The subject of an unexpired token signed by this server that names no audience (one
    /// that stands for an access token, as the metadata server's `token` endpoint gives) or an
    /// audience starting with `audience_prefix`; `None` for any other token, so an identity
    /// token minted for one service cannot be replayed elsewhere.
    pub fn access_subject(&self, token: &str, audience_prefix: &str) -> Option<String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.validate_aud = false;
        v.leeway = 5;
        let claims = decode::<Claims>(token, &self.dec, &v).ok()?.claims;
        match claims.aud.as_deref() {
            None => Some(claims.sub),
            Some(a) if a.starts_with(audience_prefix) => Some(claims.sub),
            Some(_) => None,
        }
    }

    /// Checks an `Authorization` header value for a service answering at `hosts` (no port:
    /// its `localhost` name, under `--domain` its domain name, and the custom domain the
    /// request came by, if any) whose `roles/run.invoker` members are `invokers`: the token
    /// must be signed by this server, unexpired, for one of this service's URLs if it names an
    /// audience, and its subject the admin or a member that may invoke.
    pub fn verify(
        &self,
        authorization: Option<&str>,
        hosts: &[String],
        invokers: &[String],
    ) -> Verdict {
        let Some(value) = authorization else {
            return Verdict::Missing;
        };
        let Some(token) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Verdict::Denied("the Authorization header is not a Bearer token".into());
        };
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.validate_aud = false;
        v.leeway = 5;
        let claims = match decode::<Claims>(token, &self.dec, &v) {
            Ok(d) => d.claims,
            Err(e) => return Verdict::Denied(format!("invalid identity token: {e}")),
        };
        match claims.aud.as_deref() {
            None => {}
            Some(aud) if hosts.contains(&audience_host(aud)) => {}
            Some(aud) => {
                return Verdict::Denied(format!("the token's audience {aud} is not this service"))
            }
        }
        if claims.sub == ADMIN_SUBJECT {
            return Verdict::Allowed;
        }
        // Other subjects are service accounts: IAM decides, as Cloud Run's invoker check does.
        let member = format!("serviceAccount:{}", claims.sub);
        let user = format!("user:{}", claims.sub);
        if invokers
            .iter()
            .any(|m| *m == member || *m == user || m == "allAuthenticatedUsers")
        {
            Verdict::Allowed
        } else {
            Verdict::Denied(format!(
                "{member} does not have roles/run.invoker on this service: grant it with `skiff services add-iam-policy-binding SERVICE --member {member} --role roles/run.invoker`"
            ))
        }
    }
}

/// `http://hello.localhost:8080/path` → `hello.localhost`.
fn audience_host(aud: &str) -> String {
    let rest = aud.split_once("://").map_or(aud, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let keys = TokenKeys::new(b"secret-one");
        let other = TokenKeys::new(b"secret-two");
        let any = format!("Bearer {}", keys.mint("admin", None));
        let aud = format!(
            "Bearer {}",
            keys.mint("admin", Some("http://hello.localhost:8080"))
        );
        let forged = format!("Bearer {}", other.mint("admin", None));
        let domain_aud = format!(
            "Bearer {}",
            keys.mint("admin", Some("https://hello.apps.test/x"))
        );
        let cases: &[(Option<&str>, &str, bool)] = &[
            (Some(&any), "hello.localhost", true),
            (Some(&aud), "hello.localhost", true),
            (Some(&aud), "other.localhost", false),
            (Some(&domain_aud), "hello.localhost", true),
            (Some(&domain_aud), "other.localhost", false),
            (Some(&forged), "hello.localhost", false),
            (Some("Bearer garbage"), "hello.localhost", false),
            (Some("Basic abc"), "hello.localhost", false),
        ];
        for (header, host, allowed) in cases {
            // A service's hosts: its localhost name and its name under the domain.
            let domain_host = host.replace(".localhost", ".apps.test");
            let v = keys.verify(*header, &[host.to_string(), domain_host], &[]);
            assert_eq!(v == Verdict::Allowed, *allowed, "{header:?} {host}: {v:?}");
        }
        assert_eq!(
            keys.verify(None, &["hello.localhost".to_string()], &[]),
            Verdict::Missing
        );
        // A custom domain's URL is an audience of the service it maps to, beside its own.
        let custom = format!(
            "Bearer {}",
            keys.mint("admin", Some("https://www.example.com/"))
        );
        assert_eq!(
            keys.verify(
                Some(&custom),
                &["hello.localhost".to_string(), "www.example.com".to_string()],
                &[]
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            keys.verify(Some(&custom), &["hello.localhost".to_string()], &[]),
            Verdict::Denied(_)
        ));
        let sa = format!("Bearer {}", keys.mint("a@p.iam.gserviceaccount.com", None));
        let member = vec!["serviceAccount:a@p.iam.gserviceaccount.com".to_string()];
        let other = vec!["serviceAccount:b@p.iam.gserviceaccount.com".to_string()];
        assert_eq!(
            keys.verify(Some(&sa), &["h.localhost".to_string()], &member),
            Verdict::Allowed
        );
        assert!(matches!(
            keys.verify(Some(&sa), &["h.localhost".to_string()], &other),
            Verdict::Denied(_)
        ));
        assert!(matches!(
            keys.verify(Some(&sa), &["h.localhost".to_string()], &[]),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn subjects() {
        let keys = TokenKeys::new(b"secret-one");
        let other = TokenKeys::new(b"secret-two");
        let t = keys.mint("admin", Some("http://x.localhost/"));
        assert_eq!(keys.subject_of(&t).as_deref(), Some("admin"));
        assert_eq!(other.subject_of(&t), None);
        assert_eq!(keys.subject_of("not-a-token"), None);
        let sa = keys.mint("sa@p.iam.gserviceaccount.com", None);
        assert_eq!(
            keys.subject_of(&sa).as_deref(),
            Some("sa@p.iam.gserviceaccount.com")
        );
    }

    #[test]
    fn audience_hosts() {
        assert_eq!(audience_host("http://a.localhost:8080/x"), "a.localhost");
        assert_eq!(audience_host("https://A.localhost"), "a.localhost");
        assert_eq!(audience_host("a.localhost"), "a.localhost");
    }
}
