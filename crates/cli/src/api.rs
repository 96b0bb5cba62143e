//! The HTTP side of the CLI: one blocking client with the admin token, URL building for the
//! control API's paths, and the mapping of failures (unreachable server, Google-style error
//! bodies) to one-line errors.

use crate::GlobalArgs;
use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use skiff_model::ErrorBody;
use std::time::Duration;

pub const KNATIVE: &str = "/apis/serving.knative.dev/v1";

pub struct Api {
    http: Client,
    base: String,
    token: String,
    pub project: String,
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for one path segment or
/// query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the admin token the server wrote into its data directory.
fn read_token(global: &GlobalArgs) -> Result<String> {
    if let Some(t) = global
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(t.to_string());
    }
    let path = global.data_dir().join("admin.token");
    let token = std::fs::read_to_string(&path).map_err(|e| {
        anyhow!(
            "cannot read the admin token from {} ({}): pass --token (or set SKIFF_TOKEN), or run as the server's user with the server's --data-dir",
            path.display(),
            lower_first(&e.to_string())
        )
    })?;
    let token = token.trim();
    if token.is_empty() {
        bail!(
            "the admin token file {} is empty: pass --token (or set SKIFF_TOKEN), or restart `skiff server` to write a new one",
            path.display()
        );
    }
    Ok(token.to_string())
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Joins an error and its causes into one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ").replace('\n', " ")
}

impl Api {
    pub fn new(global: &GlobalArgs) -> Result<Api> {
        let base = global.api_url.trim().trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "invalid --api-url {:?}: use a URL like http://127.0.0.1:8081",
                global.api_url
            );
        }
        let token = read_token(global)?;
        let http = Client::builder()
            .timeout(None::<Duration>)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("skiff-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Api {
            http,
            base,
            token,
            project: global.project.clone(),
        })
    }

    /// `/apis/serving.knative.dev/v1/namespaces/NS/KIND[/NAME]` in the current project.
    pub fn knative(&self, kind: &str, name: Option<&str>) -> String {
        self.knative_in(&self.project, kind, name)
    }

    pub fn knative_in(&self, ns: &str, kind: &str, name: Option<&str>) -> String {
        let mut p = format!("{KNATIVE}/namespaces/{}/{kind}", encode(ns));
        if let Some(n) = name {
            p.push('/');
            p.push_str(&encode(n));
        }
        p
    }

    /// `/skiff/v1/namespaces/NS/WHAT` in the current project.
    pub fn skiff_ns(&self, what: &str) -> String {
        format!("/skiff/v1/namespaces/{}/{what}", encode(&self.project))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a transport failure or a non-2xx answer becomes an error.
    pub fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = self.send_raw(req)?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.error_from(resp))
        }
    }

    /// Sends a request; only a transport failure is an error.
    pub fn send_raw(&self, req: RequestBuilder) -> Result<Response> {
        req.send().map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the Skiff API at {}: is `skiff server` running?",
                    self.base
                )
            } else if e.is_timeout() {
                anyhow!(
                    "the Skiff API at {} did not answer in time: check that `skiff server` is healthy",
                    self.base
                )
            } else {
                anyhow!(
                    "request to the Skiff API at {} failed: {}",
                    self.base,
                    one_line(&e)
                )
            }
        })
    }

    /// Turns a non-2xx answer into an error carrying the server's message.
    pub fn error_from(&self, resp: Response) -> anyhow::Error {
        let status = resp.status();
        let body = resp.text().unwrap_or_default();
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => e.error.message.replace('\n', " "),
            Err(_) => {
                let text: String = body.trim().chars().take(200).collect();
                if text.is_empty() {
                    format!("the Skiff API answered {status}")
                } else {
                    format!(
                        "the Skiff API answered {status}: {}",
                        text.replace('\n', " ")
                    )
                }
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            anyhow!("{message} (pass the admin token with --token or SKIFF_TOKEN, or run as the server's user)")
        } else {
            anyhow!("{message}")
        }
    }

    fn json<T: DeserializeOwned>(&self, resp: Response) -> Result<T> {
        let url = resp.url().path().to_string();
        let bytes = resp
            .bytes()
            .map_err(|e| anyhow!("cannot read the answer to {url}: {}", one_line(&e)))?;
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| {
            anyhow!("unexpected answer from the Skiff API at {url}: {e}: is --api-url a Skiff server of the same version?")
        })
    }

    /// GET's answer body as it came, for a caller that parses it borrowing from it (a list of
    /// 10 000 services parsed without a string allocated for each field). Read into a buffer
    /// of the answer's `Content-Length`, so a large answer is not copied as its buffer grows.
    pub fn get_body(&self, path: &str, query: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut resp = self.send(self.request(reqwest::Method::GET, path).query(query))?;
        let len = resp.content_length().unwrap_or(0);
        let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::io::Read::read_to_end(&mut resp, &mut body)
            .map_err(|e| anyhow!("cannot read the answer to {path}: {}", one_line(&e)))?;
        Ok(body)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path).query(query))?;
        self.json(resp)
    }

    /// GET that maps 404 to `None`.
    pub fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let resp = self.send_raw(self.request(reqwest::Method::GET, path))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.error_from(resp));
        }
        self.json(resp).map(Some)
    }

    pub fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let resp = self.send(self.request(method, path).json(body))?;
        self.json(resp)
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        let cases = [
            ("hello", "hello"),
            ("busybox:latest", "busybox%3Alatest"),
            (
                "library/busybox@sha256:ab",
                "library%2Fbusybox%40sha256%3Aab",
            ),
            ("a b", "a%20b"),
            ("é", "%C3%A9"),
        ];
        for (s, want) in cases {
            assert_eq!(encode(s), want, "{s}");
        }
    }

    #[test]
    fn lower_firsts() {
        assert_eq!(lower_first("No such file"), "no such file");
        assert_eq!(lower_first(""), "");
    }
}
