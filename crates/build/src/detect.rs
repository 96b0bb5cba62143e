//! The build plan: what to build a source directory with.
//!
//! A `Dockerfile` (or `Containerfile`) at the top is built as it is. Without one, the
//! directory's files decide, in the order Google Cloud's buildpacks try them, and a
//! Dockerfile is written for what was found:
//!
//! | found | plan | base image (`--base-image`, else the server's, else) |
//! |---|---|---|
//! | `go.mod` | `go`: `go build` a static binary, copied onto a small base | `golang:VERSION` (`go.mod`'s `go` line), run on `gcr.io/distroless/static-debian12` |
//! | `package.json` | `nodejs`: `npm ci` with a lockfile, else `npm install`; then `npm start` when `scripts.start` is set, else `node MAIN` | `node:22-slim` (`engines.node`'s major) |
//! | `requirements.txt` or `pyproject.toml` | `python`: `pip install`; the entrypoint from `Procfile`'s `web:`, else `GOOGLE_ENTRYPOINT`, else `gunicorn -b :$PORT main:app` | `python:3.12-slim` (`.python-version`) |
//! | `index.html` | `static`: busybox httpd serving the directory on `$PORT` | `busybox:stable` |
//!
//! `GOOGLE_RUNTIME_VERSION` (a build environment variable) sets the language version, as on
//! Google Cloud. The same inputs always give the same Dockerfile.

use crate::BuildError;
use std::collections::BTreeMap;
use std::path::Path;

/// What a source directory is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `dockerfile`, `python`, `nodejs`, `go` or `static`.
    pub kind: String,
    /// The Dockerfile's name in the context (the user's own), or `None` when [`Plan::generated`]
    /// holds one written for the language.
    pub dockerfile: Option<String>,
    /// The Dockerfile written for a detected language.
    pub generated: Option<String>,
    /// The base image a detected language is built on (`None` for a user's Dockerfile).
    pub base_image: Option<String>,
}

/// The default base image for each language: `python`, `nodejs`, `go`, `go-run` (the
/// image a Go binary runs on), `static`.
pub fn default_base_images() -> BTreeMap<String, String> {
    [
        ("python", "python:3.12-slim"),
        ("nodejs", "node:22-slim"),
        ("go", "golang:1.23"),
        ("go-run", "gcr.io/distroless/static-debian12"),
        ("static", "busybox:stable"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The languages [`detect`] knows, as `--build-base-image LANG=REF` takes them.
pub const LANGUAGES: &[&str] = &["python", "nodejs", "go", "go-run", "static"];

/// Decides how to build `dir`. `bases` are the base images per language (see
/// [`default_base_images`]); `base_override` (`--base-image`) replaces the detected
/// language's; `env` is the build environment (`GOOGLE_ENTRYPOINT`,
/// `GOOGLE_RUNTIME_VERSION`). Errors: nothing matches ([`BuildError::NoPlan`], listing what
/// was looked for).
pub fn detect(
    dir: &Path,
    bases: &BTreeMap<String, String>,
    base_override: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<Plan, BuildError> {
    for name in ["Dockerfile", "Containerfile"] {
        if dir.join(name).is_file() {
            return Ok(Plan {
                kind: "dockerfile".into(),
                dockerfile: Some(name.into()),
                generated: None,
                base_image: None,
            });
        }
    }
    let has = |f: &str| dir.join(f).is_file();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    let version = env
        .get("GOOGLE_RUNTIME_VERSION")
        .map(|v| v.trim().to_string());
    let base = |lang: &str, versioned: Option<String>| -> String {
        if let Some(b) = base_override {
            return b.to_string();
        }
        let default = default_base_images();
        let configured = bases.get(lang).cloned();
        match (configured, versioned) {
            // A version only changes the official image; a configured base is used as given.
            (Some(c), Some(v)) if Some(&c) == default.get(lang) => v,
            (Some(c), _) => c,
            (None, Some(v)) => v,
            (None, None) => default[lang].clone(),
        }
    };
    let plan = |kind: &str, base: String, dockerfile: String| Plan {
        kind: kind.into(),
        dockerfile: None,
        generated: Some(dockerfile),
        base_image: Some(base),
    };

    if has("go.mod") {
        let go_version = version.clone().or_else(|| {
            read("go.mod").lines().find_map(|l| {
                let v = l.trim().strip_prefix("go ")?.trim();
                // `go 1.22.3` → the `golang:1.22` image line.
                Some(v.split('.').take(2).collect::<Vec<_>>().join("."))
            })
        });
        let b = base("go", go_version.map(|v| format!("golang:{v}")));
        let run = bases
            .get("go-run")
            .cloned()
            .unwrap_or_else(|| default_base_images()["go-run"].clone());
        return Ok(plan(
            "go",
            b.clone(),
            format!(
                "FROM {b} AS build\nWORKDIR /src\nCOPY . .\nRUN CGO_ENABLED=0 go build -trimpath -o /app .\n\
                 FROM {run}\nCOPY --from=build /app /app\nENV PORT=8080\nENTRYPOINT [\"/app\"]\n"
            ),
        ));
    }
    if has("package.json") {
        let pkg: serde_json::Value = serde_json::from_str(&read("package.json")).map_err(|e| {
            BuildError::Invalid(format!(
                "package.json is not valid JSON ({e}): fix it and deploy again"
            ))
        })?;
        let engine = version.clone().or_else(|| {
            let spec = pkg["engines"]["node"].as_str()?;
            let major: String = spec
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            (!major.is_empty()).then_some(major)
        });
        let b = base("nodejs", engine.map(|v| format!("node:{v}-slim")));
        let install = if has("package-lock.json") || has("npm-shrinkwrap.json") {
            "npm ci"
        } else {
            "npm install"
        };
        let start = if pkg["scripts"]["start"].is_string() {
            "npm start".to_string()
        } else if let Some(main) = pkg["main"].as_str() {
            format!("node {}", shell_word(main))
        } else if has("server.js") {
            "node server.js".into()
        } else {
            "node index.js".into()
        };
        let entry = env.get("GOOGLE_ENTRYPOINT").cloned().unwrap_or(start);
        return Ok(plan(
            "nodejs",
            b.clone(),
            format!(
                "FROM {b}\nWORKDIR /workspace\nCOPY . .\nENV NODE_ENV=production\nRUN {install}\n\
                 ENV PORT=8080\nENTRYPOINT [\"/bin/sh\", \"-c\", {}]\n",
                json_string(&format!("exec {entry}"))
            ),
        ));
    }
    if has("requirements.txt") || has("pyproject.toml") {
        let pinned = version.clone().or_else(|| {
            let v = read(".python-version").trim().to_string();
            (!v.is_empty()).then(|| v.split('.').take(2).collect::<Vec<_>>().join("."))
        });
        let b = base("python", pinned.map(|v| format!("python:{v}-slim")));
        let procfile = read("Procfile").lines().find_map(|l| {
            l.strip_prefix("web:")
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
        });
        let (entry, needs_gunicorn) =
            match procfile.or_else(|| env.get("GOOGLE_ENTRYPOINT").cloned()) {
                Some(e) => (e, false),
                None => ("gunicorn -b :$PORT main:app".to_string(), true),
            };
        let mut install = if has("requirements.txt") {
            "pip install --no-cache-dir -r requirements.txt".to_string()
        } else {
            "pip install --no-cache-dir .".to_string()
        };
        if needs_gunicorn {
            install.push_str(" gunicorn");
        }
        return Ok(plan(
            "python",
            b.clone(),
            format!(
                "FROM {b}\nWORKDIR /workspace\nCOPY . .\nENV PYTHONUNBUFFERED=1\nRUN {install}\n\
                 ENV PORT=8080\nENTRYPOINT [\"/bin/sh\", \"-c\", {}]\n",
                json_string(&format!("exec {entry}"))
            ),
        ));
    }
    if has("index.html") {
        let b = base("static", None);
        return Ok(plan(
            "static",
            b.clone(),
            format!(
                "FROM {b}\nCOPY . /www\nENV PORT=8080\n\
                 ENTRYPOINT [\"/bin/sh\", \"-c\", \"exec httpd -f -p $PORT -h /www\"]\n"
            ),
        ));
    }
    Err(BuildError::NoPlan(
        "nothing to build in the source directory: looked for a Dockerfile or Containerfile, \
         go.mod (Go), package.json (Node.js), requirements.txt or pyproject.toml (Python) and \
         index.html (a static site); add one of them"
            .into(),
    ))
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `s` quoted for `sh` when it holds anything but safe characters.
fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detects a directory of `files` with `env` (`K=V`) and `base`, and checks the plan's
    /// kind and that the Dockerfile holds each of `want` (or the error does).
    fn check(files: &[(&str, &str)], env: &[&str], base: Option<&str>, want: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        for (f, text) in files {
            std::fs::write(dir.path().join(f), text).unwrap();
        }
        let env = env
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        let got = match detect(dir.path(), &default_base_images(), base, &env) {
            Ok(p) => format!(
                "{}\n{}",
                p.kind,
                p.generated.or(p.dockerfile).unwrap_or_default()
            ),
            Err(e) => e.to_string(),
        };
        for w in want {
            assert!(
                got.contains(w),
                "files {files:?} env {env:?}: want {w:?} in\n{got}"
            );
        }
    }

    #[test]
    fn plans() {
        check(
            &[("Dockerfile", "FROM x"), ("package.json", "{}")],
            &[],
            None,
            &["dockerfile\nDockerfile"],
        );
        check(
            &[("Containerfile", "FROM x")],
            &[],
            None,
            &["dockerfile\nContainerfile"],
        );
        check(
            &[("requirements.txt", "flask\n")],
            &[],
            None,
            &[
                "python\n",
                "FROM python:3.12-slim",
                "-r requirements.txt gunicorn",
                "exec gunicorn -b :$PORT main:app",
            ],
        );
        check(
            &[
                ("requirements.txt", ""),
                ("Procfile", "worker: x\nweb: python app.py\n"),
            ],
            &["GOOGLE_ENTRYPOINT=ignored"],
            None,
            &["exec python app.py", "-r requirements.txt\n"],
        );
        check(
            &[("pyproject.toml", ""), (".python-version", "3.11.4\n")],
            &["GOOGLE_ENTRYPOINT=uvicorn main:app"],
            None,
            &[
                "FROM python:3.11-slim",
                "pip install --no-cache-dir .\n",
                "exec uvicorn main:app",
            ],
        );
        check(
            &[("requirements.txt", "")],
            &["GOOGLE_RUNTIME_VERSION=3.13"],
            None,
            &["FROM python:3.13-slim"],
        );
        check(
            &[("requirements.txt", "")],
            &[],
            Some("my/python:1"),
            &["FROM my/python:1"],
        );
        check(
            &[
                (
                    "package.json",
                    r#"{"scripts":{"start":"node s.js"},"engines":{"node":">=20.1"}}"#,
                ),
                ("package-lock.json", "{}"),
            ],
            &[],
            None,
            &[
                "nodejs\n",
                "FROM node:20-slim",
                "RUN npm ci",
                "exec npm start",
            ],
        );
        check(
            &[("package.json", r#"{"main":"app.js"}"#)],
            &[],
            None,
            &["FROM node:22-slim", "RUN npm install", "exec node app.js"],
        );
        check(
            &[("package.json", "{")],
            &[],
            None,
            &["package.json is not valid JSON"],
        );
        check(
            &[("go.mod", "module x\n\ngo 1.22.3\n")],
            &[],
            None,
            &[
                "go\n",
                "FROM golang:1.22 AS build",
                "CGO_ENABLED=0 go build",
                "FROM gcr.io/distroless/static-debian12",
            ],
        );
        check(
            &[("index.html", "<p>")],
            &[],
            None,
            &[
                "static\n",
                "FROM busybox:stable",
                "httpd -f -p $PORT -h /www",
            ],
        );
        check(
            &[("README.md", "")],
            &[],
            None,
            &[
                "nothing to build",
                "Dockerfile",
                "go.mod",
                "package.json",
                "requirements.txt",
                "pyproject.toml",
                "index.html",
            ],
        );
    }
}
