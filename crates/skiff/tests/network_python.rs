//! Identity tokens and the project id as Google's own client library reads them from the
//! metadata server: a Python app on Debian's python3 and python3-requests with `google-auth`
//! from PyPI calls a private service with `google.oauth2.id_token.fetch_id_token`, and asks
//! `google.auth.default()` for the project.

use skiff_testkit::{debian_image, ImageSpec, TestServer};

fn bin() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_skiff"))
}

/// The app: `GET /call?target=URL` fetches an identity token for URL from the metadata server
/// with google-auth, calls URL with it through requests, and answers `STATUS\nBODY` of that
/// call; `GET /project` answers `google.auth.default()`'s project id, then the class of the
/// credentials it found. Errors answer 500 with the Python traceback.
const APP: &str = r#"import os
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import google.auth
import google.auth.transport.requests
import google.oauth2.id_token
import requests


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            if url.path == "/call":
                target = query["target"][0]
                token = google.oauth2.id_token.fetch_id_token(
                    google.auth.transport.requests.Request(), target
                )
                r = requests.get(
                    target, headers={"Authorization": "Bearer " + token}, timeout=60
                )
                self.reply(200, "%d\n%s" % (r.status_code, r.text))
            elif url.path == "/project":
                credentials, project = google.auth.default()
                kind = type(credentials).__module__ + "." + type(credentials).__name__
                self.reply(200, "%s\n%s\n" % (project, kind))
            else:
                self.reply(404, "no such path\n")
        except Exception:
            self.reply(500, traceback.format_exc())

    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


print("listening on", os.environ["PORT"], flush=True)
ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// `s` percent-encoded for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn google_auth_fetches_identity_tokens_and_the_project_from_the_metadata_server() {
    // The image first: building its Debian root file system the first time takes minutes.
    let layouts = tempfile::tempdir().unwrap();
    let spec = ImageSpec {
        entrypoint: vec!["python3".into(), "/app/main.py".into()],
        cmd: vec![],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "HOME=/root".into(),
        ],
        files: vec![("app/main.py".into(), APP.into(), 0o644)],
        user: None,
        binaries: vec![],
    };
    let layout = debian_image(
        &layouts.path().join("pyauth"),
        "pyauth",
        &["python3", "python3-requests"],
        &["google-auth"],
        &spec,
    );

    let (s, _web) = TestServer::with_web_image(bin(), &[]);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    let caller = "caller@default.iam.gserviceaccount.com";
    let stranger = "stranger@default.iam.gserviceaccount.com";
    for (service, account) in [("caller", caller), ("stranger", stranger)] {
        s.ok(&[
            "deploy",
            service,
            "--image",
            "pyauth",
            "--allow-unauthenticated",
            "--service-account",
            account,
        ]);
    }
    s.ok(&["deploy", "private", "--image", "web"]);
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "private",
        "--member",
        &format!("serviceAccount:{caller}"),
        "--role",
        "roles/run.invoker",
    ]);
    // The private service shuts out callers without a token.
    let (code, body) = s.get("private.localhost", "/", None);
    assert!(matches!(code, 401 | 403), "{code} {body}");

    let target = format!("http://private.localhost:{}/", s.ingress);
    let call = |service: &str| {
        let (code, body) = s.get(
            &format!("{service}.localhost"),
            &format!("/call?target={}", encode(&target)),
            None,
        );
        assert_eq!(
            code,
            200,
            "{service} /call: {body}\nserver log: {}",
            s.log()
        );
        body
    };
    let body = call("caller");
    assert_eq!(body, "200\nhello from skiff\n", "caller's call of {target}");
    let body = call("stranger");
    assert!(
        body.starts_with("403\n"),
        "stranger's call of {target}: {body}"
    );
    // The same token source after the binding is taken back: the caller is shut out too.
    s.ok(&[
        "services",
        "remove-iam-policy-binding",
        "private",
        "--member",
        &format!("serviceAccount:{caller}"),
        "--role",
        "roles/run.invoker",
    ]);
    let body = call("caller");
    assert!(
        body.starts_with("403\n"),
        "caller's call without the binding: {body}"
    );

    let (code, body) = s.get("caller.localhost", "/project", None);
    assert_eq!(code, 200, "/project: {body}\nserver log: {}", s.log());
    assert_eq!(
        body, "default\ngoogle.auth.compute_engine.credentials.Credentials\n",
        "google.auth.default() found other credentials or another project"
    );
}
