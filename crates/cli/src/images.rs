//! `skiff images ...`: import an OCI layout directory, OCI archive or docker archive into the
//! server's image store, pull one from a registry, list and delete images.

use crate::api::{encode, one_line, Api};
use crate::output::{human_size, or_dash, print_machine, print_table, ListFormat};
use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::Body;
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum ImagesCommand {
    /// Import an OCI layout directory, an OCI archive or a docker archive; prints the digest
    Import {
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Reference to store the image under (default: the archive's own)
        #[arg(long, value_name = "NAME[:TAG]")]
        name: Option<String>,
    },
    /// Pull an image from a registry into the store; prints the digest
    Pull {
        #[arg(value_name = "HOST[:PORT]/REPO[:TAG|@DIGEST]")]
        reference: String,
    },
    /// Delete blobs and unpacked layers that no image, revision or job execution uses
    Prune,
    /// List the images in the store
    List {
        /// Print the API's answer as JSON or YAML instead of a table
        #[arg(long, value_name = "FORMAT")]
        format: Option<ListFormat>,
    },
    /// Delete an image reference (NAME[:TAG] or NAME@sha256:HEX)
    Delete {
        #[arg(value_name = "REF")]
        reference: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub created: Option<String>,
    /// `imported`, `pulled`, `pushed` or `built`.
    pub source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageList {
    images: Vec<ImageInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Imported {
    reference: String,
    digest: String,
}

pub fn run(api: &Api, cmd: ImagesCommand) -> Result<()> {
    match cmd {
        ImagesCommand::Import { path, name } => import(api, &path, name.as_deref()),
        ImagesCommand::Prune => {
            let v: Value = api.send_json(
                Method::POST,
                "/skiff/v1/images:prune",
                &serde_json::json!({}),
            )?;
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            eprintln!(
                "Deleted {} blobs ({}) and {} unpacked layers, and {} abandoned uploads.",
                n("blobs"),
                human_size(n("bytes")),
                n("layers"),
                n("uploads")
            );
            eprintln!(
                "Deleted {} build cache images ({}).",
                n("buildCacheImages"),
                human_size(n("buildCacheBytes"))
            );
            let dropped: Vec<&str> = v["buildCacheDropped"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !dropped.is_empty() {
                eprintln!(
                    "Dropped the layer cache of {}: buildah's storage was over the server's \
                     --build-cache-max.",
                    dropped.join(", ")
                );
            }
            Ok(())
        }
        ImagesCommand::Pull { reference } => {
            let digest = pull(api, &reference)?;
            println!("{digest}");
            Ok(())
        }
        ImagesCommand::List { format } => {
            let v: Value = api.get("/skiff/v1/images", &[])?;
            if let Some(f) = format {
                return print_machine(&v, f == ListFormat::Yaml);
            }
            let list: ImageList = serde_json::from_value(v)
                .map_err(|e| anyhow!("unexpected image list from the Skiff API: {e}"))?;
            print_table(
                &["REFERENCE", "DIGEST", "SIZE", "CREATED", "SOURCE"],
                &rows(&list.images),
            );
            Ok(())
        }
        ImagesCommand::Delete { reference } => {
            api.delete(&format!("/skiff/v1/images/{}", encode(&reference)))?;
            eprintln!("Deleted image [{reference}].");
            Ok(())
        }
    }
}

pub fn rows(images: &[ImageInfo]) -> Vec<Vec<String>> {
    let mut images: Vec<&ImageInfo> = images.iter().collect();
    images.sort_by(|a, b| a.reference.cmp(&b.reference));
    images
        .into_iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                i.digest.clone(),
                human_size(i.size),
                or_dash(i.created.as_deref()),
                or_dash(i.source.as_deref()),
            ]
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Pulled {
    reference: String,
    digest: String,
    blobs: usize,
    downloaded: usize,
    downloaded_bytes: u64,
}

/// One line of the server's streamed pull (`Accept: application/x-ndjson`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PullEvent {
    event: String,
    digest: String,
    blobs: usize,
    cached: usize,
    size: u64,
    downloaded: u64,
    done: bool,
    from: u64,
    attempt: u32,
    error: Option<PullError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PullError {
    message: String,
}

/// `sha256:` and the first 12 hex digits, as container tools show a layer.
fn short(digest: &str) -> &str {
    let end = "sha256:".len() + 12;
    digest.get(..end).unwrap_or(digest)
}

/// Has the server pull `reference` from its registry, showing each blob's download as it
/// goes (on a terminal a line per blob that counts up, elsewhere a line when a blob starts,
/// resumes after a cut connection and is done); returns the manifest digest.
pub fn pull(api: &Api, reference: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    eprintln!("Pulling {reference}...");
    let resp = api.send(
        api.request(Method::POST, "/skiff/v1/images:pull")
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .json(&serde_json::json!({ "reference": reference })),
    )?;
    let tty = std::io::stderr().is_terminal();
    let mut out: Option<Pulled> = None;
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.map_err(|e| {
            anyhow!(
                "the Skiff API stopped answering during the pull ({}): the server may still finish it; run `skiff images pull {reference}` again",
                one_line(&e)
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let ev: PullEvent = serde_json::from_str(&line).with_context(|| {
            format!("the Skiff API sent a pull event that does not parse: {line}")
        })?;
        let mut err = std::io::stderr().lock();
        match ev.event.as_str() {
            "resolved" if ev.blobs > ev.cached => {
                let _ = writeln!(err, "  {}", to_download(ev.blobs - ev.cached, ev.blobs));
            }
            "blob" if tty => {
                let state = if ev.done { "done" } else { "downloading" };
                let _ = write!(
                    err,
                    "\r  {}: {} {} / {}\x1b[K{}",
                    short(&ev.digest),
                    state,
                    human_size(ev.downloaded),
                    human_size(ev.size),
                    if ev.done { "\n" } else { "" }
                );
            }
            "blob" if ev.done => {
                let _ = writeln!(
                    err,
                    "  {}: done ({})",
                    short(&ev.digest),
                    human_size(ev.downloaded)
                );
            }
            "blob" if ev.downloaded == 0 => {
                let _ = writeln!(
                    err,
                    "  {}: downloading {}",
                    short(&ev.digest),
                    human_size(ev.size)
                );
            }
            "resumed" => {
                let _ = writeln!(
                    err,
                    "{}  {}: the connection was cut; resuming at byte {} (attempt {})",
                    if tty { "\n" } else { "" },
                    short(&ev.digest),
                    ev.from,
                    ev.attempt
                );
            }
            "unpacking" => {
                let _ = writeln!(err, "  Verifying and unpacking...");
            }
            "pulled" => out = Some(serde_json::from_str(&line)?),
            "error" => {
                let e = ev.error.unwrap_or_default();
                bail!("{}", e.message.replace('\n', " "));
            }
            _ => {}
        }
    }
    let Some(out) = out.filter(|o| !o.digest.is_empty()) else {
        bail!("the Skiff API ended the pull without a result: check the server's log, then run `skiff images pull {reference}` again");
    };
    if out.blobs == 0 {
        eprintln!("Pulled image [{}]: already in the store.", out.reference);
    } else {
        eprintln!(
            "Pulled image [{}]: {} of {} blobs downloaded ({}){}.",
            out.reference,
            out.downloaded,
            out.blobs,
            human_size(out.downloaded_bytes),
            if out.downloaded < out.blobs {
                ", the rest already in the store"
            } else {
                ""
            }
        );
    }
    Ok(out.digest)
}

/// What a pull has to download: `"2 of 3 blobs to download, the rest already in the store"`,
/// or `"2 blobs to download"` when the store holds none of them.
fn to_download(missing: usize, blobs: usize) -> String {
    if missing < blobs {
        format!("{missing} of {blobs} blobs to download, the rest already in the store")
    } else {
        format!("{missing} blobs to download")
    }
}

/// Tars an OCI layout directory (entries relative to its root) into an unnamed temp file.
pub fn tar_dir(dir: &Path) -> Result<File> {
    if !dir.join("oci-layout").is_file() {
        bail!(
            "{} is a directory but not an OCI image layout (no oci-layout file): give an OCI layout directory, an OCI archive or a docker archive",
            dir.display()
        );
    }
    let mut f = tempfile::tempfile().context("cannot create a temporary file to pack the image")?;
    {
        let mut b = tar::Builder::new(&mut f);
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all("", dir)
            .and_then(|_| b.finish())
            .map_err(|e| anyhow!("cannot pack {}: {e}", dir.display()))?;
    }
    f.seek(SeekFrom::Start(0))
        .context("cannot rewind the packed image")?;
    Ok(f)
}

/// The path's metadata, or an error saying what to give instead.
pub fn check_path(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!(
                "{} does not exist: give an OCI layout directory, an OCI archive or a docker archive",
                path.display()
            )
        } else {
            anyhow!("cannot read {}: {e}", path.display())
        }
    })
}

fn import(api: &Api, path: &Path, name: Option<&str>) -> Result<()> {
    let meta = check_path(path)?;
    let file = if meta.is_dir() {
        tar_dir(path)?
    } else {
        File::open(path).map_err(|e| anyhow!("cannot open {}: {e}", path.display()))?
    };
    let len = file
        .metadata()
        .map(|m| m.len())
        .with_context(|| format!("cannot read {}", path.display()))?;
    eprintln!("Importing {} ({})...", path.display(), human_size(len));
    let query: Vec<(&str, &str)> = name.map(|n| vec![("name", n)]).unwrap_or_default();
    let req = api
        .request(Method::POST, "/skiff/v1/images:import")
        .query(&query)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
        .body(Body::sized(file, len));
    let resp = match api.send_raw(req) {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            return Err(api.error_from(resp))
                .with_context(|| format!("cannot import {}", path.display()))
        }
        Err(upload) => {
            // A server that refuses the upload before reading it (a wrong token, a bad
            // `--name`) answers and closes the connection while the body is still being sent,
            // and the HTTP client reports only the broken upload. Ask again without a body to
            // learn why; "empty upload" means the refusal was about the body after all.
            let why = match api.send_raw(
                api.request(Method::POST, "/skiff/v1/images:import")
                    .query(&query)
                    .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
                    .body(Vec::new()),
            ) {
                Ok(r) if r.status().is_client_error() => {
                    let e = api.error_from(r);
                    (!e.to_string().starts_with("empty upload")).then_some(e)
                }
                _ => None,
            };
            return Err(why.unwrap_or(upload))
                .with_context(|| format!("cannot import {}", path.display()));
        }
    };
    let out: Imported = resp
        .json()
        .map_err(|e| anyhow!("unexpected answer to the import: {}", one_line(&e)))?;
    if out.digest.is_empty() {
        bail!("the Skiff API answered the import without a digest: is --api-url a Skiff server of the same version?");
    }
    eprintln!("Imported image [{}].", out.reference);
    println!("{}", out.digest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table;
    use std::io::Read;

    #[test]
    fn the_rest_is_named_only_when_there_is_one() {
        assert_eq!(to_download(2, 2), "2 blobs to download");
        assert_eq!(
            to_download(1, 3),
            "1 of 3 blobs to download, the rest already in the store"
        );
    }

    #[test]
    fn table_rows() {
        let list: ImageList = serde_json::from_value(serde_json::json!({"images": [
            {"reference": "zz:latest", "digest": "sha256:bb", "size": 2048,
             "created": "2024-01-01T00:00:00Z", "source": "pushed"},
            {"reference": "busybox:latest", "digest": "sha256:aa", "size": 4404019}
        ]}))
        .unwrap();
        assert_eq!(
            table(
                &["REFERENCE", "DIGEST", "SIZE", "CREATED", "SOURCE"],
                &rows(&list.images)
            ),
            "REFERENCE       DIGEST     SIZE    CREATED               SOURCE\n\
             busybox:latest  sha256:aa  4.2MiB  -                     -\n\
             zz:latest       sha256:bb  2.0KiB  2024-01-01T00:00:00Z  pushed\n"
        );
    }

    #[test]
    fn packs_layout_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(root.join("index.json"), "{}").unwrap();
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(root.join("blobs/sha256/abc"), "layer").unwrap();
        let mut f = tar_dir(root).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let mut names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .map(|n| n.trim_end_matches('/').to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "blobs",
                "blobs/sha256",
                "blobs/sha256/abc",
                "index.json",
                "oci-layout"
            ]
        );

        let empty = tempfile::tempdir().unwrap();
        let e = tar_dir(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not an OCI image layout"), "{e}");
    }
}
