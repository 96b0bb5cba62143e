//! Skiff's registry walked through the four workflows of the OCI distribution spec's
//! conformance suite (pull, push, content discovery, content management) over plain HTTP, with
//! the requests the spec describes and the answers it requires: status codes, `Location`,
//! `Docker-Content-Digest`, `Content-Type`, `Content-Length`, `Range`, `Link`, `OCI-Subject`,
//! `OCI-Filters-Applied`, `OCI-Tag` (tags given as `?tag=` on a push by digest) and the error
//! codes. The data mirrors the suite's: an image (gzip and
//! uncompressed layers), a large manifest, an index, a nested index, an empty index, artifacts
//! with and without layers, an artifact index, referrers of a manifest and of an index, a
//! referrer whose subject is missing, a descriptor with `data`, non-distributable layers,
//! an image without layers, custom fields, and a manifest whose digest does not match.

use sha2::Digest as _;
use skiff_testkit::TestServer;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");
const MT_IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
const MT_EXAMPLE1: &str = "application/vnd.example.oci.conformance.v1";
const MT_EXAMPLE2: &str = "application/vnd.example.oci.conformance.v2";

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// One response, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The first error code of a distribution-spec error body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// A client of the registry at `base` with the admin token.
struct Reg {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Reg {
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut rb = self
            .http
            .request(method.parse().unwrap(), url)
            .basic_auth("conformance", Some(&self.token));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if !body.is_empty() || method == "PUT" || method == "PATCH" {
            rb = rb.body(body.to_vec());
        }
        let r = rb.send().unwrap();
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().unwrap().to_vec(),
        }
    }

    /// A `Location` made absolute against the registry.
    fn location(&self, a: &Answer) -> String {
        let loc = a.header("location").expect("a Location header");
        if loc.starts_with("http") {
            loc.to_string()
        } else {
            format!("{}{loc}", self.base)
        }
    }

    fn with_digest(url: &str, d: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}digest={d}")
    }

    /// Push a blob with POST then PUT (the suite's default), checking the answers.
    fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let a = self.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
        assert_eq!(a.status, 202);
        let put = Self::with_digest(&self.location(&a), &d);
        let a = self.send(
            "PUT",
            &put,
            &[("Content-Type", "application/octet-stream")],
            data,
        );
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.header("docker-content-digest"), Some(d.as_str()));
        self.check_blob_at(&self.location(&a), data);
        d
    }

    /// The blob at `url` is `data`.
    fn check_blob_at(&self, url: &str, data: &[u8]) {
        let a = self.send("GET", url, &[], b"");
        assert_eq!(a.status, 200, "{url}");
        assert_eq!(a.body, data, "{url}");
    }

    /// Push a manifest to `reference`, checking `Location`, `Docker-Content-Digest`, the
    /// `OCI-Subject` echo and that `Location` serves it back byte for byte with its type.
    fn push_manifest(&self, repo: &str, reference: &str, m: &Manifest) {
        let a = self.send(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", m.media_type)],
            &m.bytes,
        );
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.header("docker-content-digest"), Some(m.digest.as_str()));
        if let Some(subject) = &m.subject {
            assert_eq!(a.header("oci-subject"), Some(subject.as_str()));
        }
        let back = self.send("GET", &self.location(&a), &[("Accept", MT_INDEX)], b"");
        assert_eq!(back.status, 200);
        assert_eq!(back.header("content-type"), Some(m.media_type));
        assert_eq!(
            back.header("content-length"),
            Some(m.bytes.len().to_string().as_str())
        );
        assert_eq!(back.body, m.bytes);
    }
}

/// A manifest of the test data.
#[derive(Clone)]
struct Manifest {
    media_type: &'static str,
    bytes: Vec<u8>,
    digest: String,
    subject: Option<String>,
    artifact_type: Option<String>,
    annotations: Option<serde_json::Value>,
}

impl Manifest {
    fn new(v: serde_json::Value) -> Manifest {
        let bytes = serde_json::to_vec(&v).unwrap();
        Manifest {
            media_type: if v["mediaType"] == MT_INDEX {
                MT_INDEX
            } else {
                MT_IMAGE
            },
            digest: digest(&bytes),
            subject: v["subject"]["digest"].as_str().map(str::to_string),
            artifact_type: v["artifactType"]
                .as_str()
                .or_else(|| v["config"]["mediaType"].as_str())
                .map(str::to_string),
            annotations: v.get("annotations").cloned(),
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest,
                           "size": self.bytes.len()})
    }
}

/// A data set: blobs, then manifests in push order (the last one tagged when `tag` is set).
#[derive(Default)]
struct Data {
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: Vec<Manifest>,
    tag: Option<String>,
    /// Manifests whose subject this set's referrers name, with the referrers expected.
    referrers: Vec<(String, Vec<Manifest>)>,
}

impl Data {
    fn blob(&mut self, data: Vec<u8>) -> serde_json::Value {
        let d = digest(&data);
        let size = data.len();
        self.blobs.insert(d.clone(), data);
        serde_json::json!({"digest": d, "size": size})
    }

    fn with_type(mut desc: serde_json::Value, mt: &str) -> serde_json::Value {
        desc["mediaType"] = mt.into();
        desc
    }

    /// A layer tar holding one file with `content`; gzip-compressed when `gzip`.
    fn layer(&mut self, content: &str, gzip: bool) -> (serde_json::Value, String) {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, "conformance.txt", content.as_bytes())
            .unwrap();
        let tar = b.into_inner().unwrap();
        let diff_id = digest(&tar);
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).unwrap();
            let desc = self.blob(gz.finish().unwrap());
            (
                Self::with_type(desc, "application/vnd.oci.image.layer.v1.tar+gzip"),
                diff_id,
            )
        } else {
            let desc = self.blob(tar);
            (
                Self::with_type(desc, "application/vnd.oci.image.layer.v1.tar"),
                diff_id,
            )
        }
    }

    /// An image: a config and `layers` layers, unique to `seed`.
    fn image(&mut self, seed: &str, gzip: bool, extra: serde_json::Value) -> Manifest {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for i in 0..2 {
            let (desc, diff_id) = self.layer(&format!("{seed} layer {i}\n"), gzip);
            layers.push(desc);
            diff_ids.push(diff_id);
        }
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config = Self::with_type(self.blob(serde_json::to_vec(&config).unwrap()), MT_CONFIG);
        let mut m = serde_json::json!({"schemaVersion": 2, "mediaType": MT_IMAGE,
            "config": config, "layers": layers});
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                m[k] = v;
            }
        }
        let m = Manifest::new(m);
        self.manifests.push(m.clone());
        m
    }

    /// An artifact of `artifact_type` with the empty config and one layer of its own.
    fn artifact(&mut self, artifact_type: &str, seed: &str, extra: serde_json::Value) -> Manifest {
        let config = Self::with_type(self.blob(b"{}".to_vec()), MT_EMPTY);
        let layer = Self::with_type(
            self.blob(format!("{seed}: artifact content").into_bytes()),
            artifact_type,
        );
        let mut m = serde_json::json!({"schemaVersion": 2, "mediaType": MT_IMAGE,
            "artifactType": artifact_type, "config": config, "layers": [layer],
            "annotations": {"org.example.seed": seed}});
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                m[k] = v;
            }
        }
        let m = Manifest::new(m);
        self.manifests.push(m.clone());
        m
    }

    fn index(
        &mut self,
        entries: &[(&Manifest, Option<&str>)],
        extra: serde_json::Value,
    ) -> Manifest {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(m, arch)| {
                let mut d = m.descriptor();
                if let Some(arch) = arch {
                    d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
                }
                d
            })
            .collect();
        let mut m =
            serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
        if let serde_json::Value::Object(extra) = extra {
            for (k, v) in extra {
                m[k] = v;
            }
        }
        let m = Manifest::new(m);
        self.manifests.push(m.clone());
        m
    }
}

fn none() -> serde_json::Value {
    serde_json::json!({})
}

/// The data sets of the suite, each named.
fn data_sets() -> Vec<(&'static str, Data)> {
    let mut sets = Vec::new();

    let mut d = Data::default();
    d.image("image", true, none());
    d.tag = Some("image".into());
    sets.push(("image", d));

    let mut d = Data::default();
    d.image("uncompressed", false, none());
    d.tag = Some("image-uncompressed".into());
    sets.push(("image-uncompressed", d));

    let mut d = Data::default();
    let big: serde_json::Map<String, serde_json::Value> = (0..2000)
        .map(|i| (format!("org.example.large.{i}"), "x".repeat(1000).into()))
        .collect();
    d.image("large", true, serde_json::json!({"annotations": big}));
    d.tag = Some("large-manifest".into());
    sets.push(("large-manifest", d));

    let mut d = Data::default();
    let a = d.image("index amd64", true, none());
    let b = d.image("index arm64", true, none());
    d.index(&[(&a, Some("amd64")), (&b, Some("arm64"))], none());
    d.tag = Some("index".into());
    sets.push(("index", d));

    let mut d = Data::default();
    let a = d.image("nested a", true, none());
    let b = d.image("nested b", true, none());
    let i1 = d.index(&[(&a, Some("amd64"))], none());
    let i2 = d.index(&[(&b, Some("arm64"))], none());
    d.index(&[(&i1, None), (&i2, None)], none());
    d.tag = Some("index-of-index".into());
    sets.push(("nested-index", d));

    let mut d = Data::default();
    d.index(&[], none());
    d.tag = Some("empty-index".into());
    sets.push(("empty-index", d));

    let mut d = Data::default();
    d.artifact(MT_EXAMPLE1, "artifact", none());
    d.tag = Some("artifact".into());
    sets.push(("artifact", d));

    let mut d = Data::default();
    let a = d.artifact(MT_EXAMPLE1, "artifact-index a", none());
    let b = d.artifact(MT_EXAMPLE1, "artifact-index b", none());
    d.index(
        &[(&a, Some("amd64")), (&b, Some("arm64"))],
        serde_json::json!({"artifactType": MT_EXAMPLE1}),
    );
    d.tag = Some("artifact-index".into());
    sets.push(("artifact-index", d));

    let mut d = Data::default();
    let config = Data::with_type(d.blob(b"{}".to_vec()), MT_EMPTY);
    let m = Manifest::new(
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_IMAGE,
        "artifactType": MT_EXAMPLE1, "config": config, "layers": [config]}),
    );
    d.manifests.push(m);
    d.tag = Some("artifact-without-layers".into());
    sets.push(("artifact-without-layers", d));

    let mut d = Data::default();
    let subject = d.image("subject", true, none());
    let s = serde_json::json!({"subject": subject.descriptor()});
    let r1 = d.image("referrer image", true, s.clone());
    let r2 = d.artifact(MT_EXAMPLE1, "referrer 1", s.clone());
    let r3 = d.artifact(MT_EXAMPLE2, "referrer 2", s);
    d.referrers.push((subject.digest.clone(), vec![r1, r2, r3]));
    d.tag = None;
    sets.push(("artifacts-with-subject", d));

    let mut d = Data::default();
    let a = d.image("index subject", true, none());
    let subject = d.index(&[(&a, Some("amd64"))], none());
    let x = d.artifact(MT_EXAMPLE1, "index referrer", none());
    let r = d.index(
        &[(&x, None)],
        serde_json::json!({"artifactType": MT_EXAMPLE1, "subject": subject.descriptor(),
                           "annotations": {"org.example.seed": "index referrer"}}),
    );
    d.referrers.push((subject.digest.clone(), vec![r]));
    sets.push(("index-with-subject", d));

    let mut d = Data::default();
    let missing = serde_json::json!({"mediaType": MT_IMAGE,
        "digest": digest(b"a manifest never pushed"), "size": 123});
    let r = d.artifact(
        MT_EXAMPLE1,
        "missing subject",
        serde_json::json!({"subject": missing}),
    );
    d.referrers
        .push((missing["digest"].as_str().unwrap().to_string(), vec![r]));
    sets.push(("missing-subject", d));

    let mut d = Data::default();
    let config = Data::with_type(d.blob(b"{}".to_vec()), MT_EMPTY);
    let mut with_data = config.clone();
    with_data["data"] = "e30=".into();
    let layer = Data::with_type(d.blob(b"data field layer".to_vec()), MT_EXAMPLE1);
    d.manifests.push(Manifest::new(
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_IMAGE,
        "artifactType": MT_EXAMPLE1, "config": with_data, "layers": [layer]}),
    ));
    d.tag = Some("data-field".into());
    sets.push(("data-field", d));

    let mut d = Data::default();
    let (layer, diff_id) = d.layer("distributable", true);
    let foreign = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "digest": digest(b"a layer this registry never holds"), "size": 33,
        "urls": ["https://example.com/layer"]});
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(b"foreign"), diff_id]}});
    let config = Data::with_type(d.blob(serde_json::to_vec(&config).unwrap()), MT_CONFIG);
    d.manifests.push(Manifest::new(
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_IMAGE,
        "config": config, "layers": [foreign, layer]}),
    ));
    d.tag = Some("non-distributable".into());
    sets.push(("non-distributable-layers", d));

    let mut d = Data::default();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []}});
    let config = Data::with_type(d.blob(serde_json::to_vec(&config).unwrap()), MT_CONFIG);
    d.manifests
        .push(Manifest::new(serde_json::json!({"schemaVersion": 2,
        "mediaType": MT_IMAGE, "config": config, "layers": []})));
    d.tag = Some("no-layers".into());
    sets.push(("no-layers", d));

    let mut d = Data::default();
    d.image(
        "custom",
        true,
        serde_json::json!({"org.example.custom": {"field": [1, 2, 3]}}),
    );
    d.tag = Some("custom-fields".into());
    sets.push(("custom-fields", d));

    sets
}

#[test]
fn the_registry_answers_the_conformance_workflows_as_the_distribution_spec_requires() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let token = std::fs::read_to_string(s.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let reg = Reg {
        base: format!("http://127.0.0.1:{}", s.api),
        token,
        http: reqwest::blocking::Client::new(),
    };
    let (repo, repo2) = ("conformance/one", "conformance/two");

    // Ping, and an empty repository: its tags list is 404 NAME_UNKNOWN (or an empty list),
    // its referrers an empty index.
    let a = reg.send("GET", "/v2/", &[], b"");
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let a = reg.send("GET", &format!("/v2/{repo}/tags/list"), &[], b"");
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/referrers/{}", digest(b"nothing refers to this")),
        &[],
        b"",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some(MT_INDEX));
    assert_eq!(
        a.json(),
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []})
    );

    blob_workflows(&reg, repo, repo2);

    // Each data set: push, list, head, pull, referrers, delete.
    for (name, data) in data_sets() {
        push_pull_discover_delete(&reg, repo, name, &data);
    }

    tag_parameters(&reg, repo);
    manifest_errors(&reg, repo);
}

/// A manifest pushed by digest with `?tag=` parameters gets those tags, listed in `OCI-Tag`.
fn tag_parameters(reg: &Reg, repo: &str) {
    let mut data = Data::default();
    let m = data.image("tag parameters", true, none());
    for blob in data.blobs.values() {
        reg.push_blob(repo, blob);
    }
    // An invalid tag refuses the push: nothing is stored.
    let url = format!("/v2/{repo}/manifests/{}", m.digest);
    let a = reg.send(
        "PUT",
        &format!("{url}?tag=ok&tag=-bad"),
        &[("Content-Type", MT_IMAGE)],
        &m.bytes,
    );
    assert_eq!((a.status, a.code().as_str()), (400, "TAG_INVALID"));
    assert_eq!(reg.send("HEAD", &url, &[], b"").status, 404);
    let a = reg.send(
        "PUT",
        &format!("{url}?tag=tag-param-0&tag=tag-param-1"),
        &[("Content-Type", MT_IMAGE)],
        &m.bytes,
    );
    assert_eq!(a.status, 201);
    let mut tags: Vec<String> = a
        .headers
        .get_all("oci-tag")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|t| t.trim().to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, ["tag-param-0", "tag-param-1"]);
    for tag in &tags {
        let a = reg.send("GET", &format!("/v2/{repo}/manifests/{tag}"), &[], b"");
        assert_eq!(a.status, 200);
        assert_eq!(a.body, m.bytes);
    }
    let a = reg.send("DELETE", &url, &[], b"");
    assert_eq!(a.status, 202);
    for tag in &tags {
        let a = reg.send("HEAD", &format!("/v2/{repo}/manifests/{tag}"), &[], b"");
        assert_eq!(a.status, 404, "{tag}");
    }
}

/// Blob pushes every way the spec allows, pulls with ranges, mounts, cancels and deletes.
fn blob_workflows(reg: &Reg, repo: &str, repo2: &str) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = digest(&data);

    // POST then PUT; HEAD and GET give the digest and size.
    reg.push_blob(repo, &data);
    let a = reg.send("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
    assert_eq!(a.status, 200);
    assert_eq!(a.header("docker-content-digest"), Some(d.as_str()));
    assert_eq!(a.header("content-length"), Some("10000"));
    // Ranges: a start and an end, an open end, the last byte; past the end is 416.
    for (range, from, to) in [
        ("bytes=0-99", 0, 99),
        ("bytes=5000-", 5000, 9999),
        ("bytes=9999-9999", 9999, 9999),
    ] {
        let a = reg.send(
            "GET",
            &format!("/v2/{repo}/blobs/{d}"),
            &[("Range", range)],
            b"",
        );
        assert_eq!(a.status, 206, "{range}");
        assert_eq!(a.body, data[from..=to], "{range}");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes {from}-{to}/10000").as_str())
        );
    }
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/blobs/{d}"),
        &[("Range", "bytes=10000-")],
        b"",
    );
    assert_eq!(a.status, 416);

    // POST with the digest: the whole blob in one request.
    let mono = b"monolithic blob".to_vec();
    let md = digest(&mono);
    let a = reg.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={md}"),
        &[("Content-Type", "application/octet-stream")],
        &mono,
    );
    assert_eq!(a.status, 201);
    assert_eq!(a.header("docker-content-digest"), Some(md.as_str()));
    reg.check_blob_at(&reg.location(&a), &mono);

    // Chunked: PATCH with Content-Range in three chunks, an out-of-order chunk refused with
    // 416, the upload's status (204, Range 0-N) to recover, PUT to close.
    let chunked: Vec<u8> = (0..3000u32).map(|i| (i % 13) as u8).collect();
    let cd = digest(&chunked);
    let a = reg.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(a.status, 202);
    if let Some(min) = a.header("oci-chunk-min-length") {
        assert!(min.parse::<u64>().unwrap() <= 1000, "{min}");
    }
    let mut loc = reg.location(&a);
    for (i, part) in chunked.chunks(1000).enumerate() {
        let (start, end) = (i * 1000, i * 1000 + part.len() - 1);
        if i == 1 {
            let bad = format!("{}-{}", start + 1000, end + 1000);
            let a = reg.send(
                "PATCH",
                &loc,
                &[
                    ("Content-Range", &bad),
                    ("Content-Type", "application/octet-stream"),
                ],
                &chunked[start + 1000..=end + 1000],
            );
            assert_eq!(a.status, 416);
            let a = reg.send("GET", &loc, &[], b"");
            assert_eq!(a.status, 204);
            assert_eq!(a.header("range"), Some("0-999"));
            loc = reg.location(&a);
        }
        let range = format!("{start}-{end}");
        let a = reg.send(
            "PATCH",
            &loc,
            &[
                ("Content-Range", &range),
                ("Content-Type", "application/octet-stream"),
            ],
            part,
        );
        assert_eq!(a.status, 202);
        assert_eq!(a.header("range"), Some(format!("0-{end}").as_str()));
        loc = reg.location(&a);
    }
    let a = reg.send("PUT", &Reg::with_digest(&loc, &cd), &[], b"");
    assert_eq!(a.status, 201);
    reg.check_blob_at(&reg.location(&a), &chunked);

    // Streamed: one PATCH without Content-Range, then PUT.
    let streamed = b"streamed blob content".to_vec();
    let sd = digest(&streamed);
    let a = reg.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    let a = reg.send("PATCH", &reg.location(&a), &[], &streamed);
    assert_eq!(a.status, 202);
    let a = reg.send("PUT", &Reg::with_digest(&reg.location(&a), &sd), &[], b"");
    assert_eq!(a.status, 201);

    // The last chunk in the closing PUT, and a closing PUT with the wrong digest (400).
    let a = reg.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    let a = reg.send(
        "PATCH",
        &reg.location(&a),
        &[("Content-Range", "0-4")],
        b"last ",
    );
    let ld = digest(b"last chunk");
    let a = reg.send(
        "PUT",
        &Reg::with_digest(&reg.location(&a), &ld),
        &[("Content-Range", "5-9")],
        b"chunk",
    );
    assert_eq!(a.status, 201);
    let a = reg.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    let a = reg.send(
        "PUT",
        &Reg::with_digest(&reg.location(&a), &digest(b"other bytes")),
        &[],
        b"these bytes",
    );
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));

    // Cancel: DELETE the session (204); its status is then 404 BLOB_UPLOAD_UNKNOWN and the
    // blob never appears.
    let cancelled = b"cancelled".to_vec();
    let a = reg.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    let session = reg.location(&a);
    reg.send("PATCH", &session, &[], &cancelled);
    let a = reg.send("DELETE", &session, &[], b"");
    assert_eq!(a.status, 204);
    let a = reg.send("GET", &session, &[], b"");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UPLOAD_UNKNOWN"));
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/blobs/{}", digest(&cancelled)),
        &[],
        b"",
    );
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));

    // Mounts: from another repository (201), anonymous (201), of a blob that is nowhere: an
    // upload session instead (202), which a PUT completes.
    for query in [format!("mount={d}&from={repo}"), format!("mount={d}")] {
        let a = reg.send(
            "POST",
            &format!("/v2/{repo2}/blobs/uploads/?{query}"),
            &[],
            b"",
        );
        assert_eq!(a.status, 201, "{query}");
        assert_eq!(a.header("docker-content-digest"), Some(d.as_str()));
        reg.check_blob_at(&reg.location(&a), &data);
    }
    let absent = b"mounted from nowhere".to_vec();
    let ad = digest(&absent);
    let a = reg.send(
        "POST",
        &format!("/v2/{repo2}/blobs/uploads/?mount={ad}&from={repo}"),
        &[],
        b"",
    );
    assert_eq!(a.status, 202);
    let a = reg.send(
        "PUT",
        &Reg::with_digest(&reg.location(&a), &ad),
        &[],
        &absent,
    );
    assert_eq!(a.status, 201);

    // Blob deletes: 202, then HEAD is 404; again is 404.
    for blob in [&d, &md, &cd, &sd, &ld, &ad] {
        let a = reg.send("DELETE", &format!("/v2/{repo}/blobs/{blob}"), &[], b"");
        assert_eq!(a.status, 202, "{blob}");
        let a = reg.send("HEAD", &format!("/v2/{repo}/blobs/{blob}"), &[], b"");
        assert_eq!(a.status, 404, "{blob}");
    }
    let a = reg.send("DELETE", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
    assert_eq!((a.status, a.code().as_str()), (404, "BLOB_UNKNOWN"));
}

fn push_pull_discover_delete(reg: &Reg, repo: &str, name: &str, data: &Data) {
    // Push: blobs, then manifests by digest, the last also by tag.
    for blob in data.blobs.values() {
        reg.push_blob(repo, blob);
    }
    for m in &data.manifests {
        reg.push_manifest(repo, &m.digest, m);
    }
    let last = data.manifests.last().unwrap();
    if let Some(tag) = &data.tag {
        reg.push_manifest(repo, tag, last);
    }

    // List: the tag is there, a page at a time with `n` and `last`.
    let a = reg.send("GET", &format!("/v2/{repo}/tags/list"), &[], b"");
    assert_eq!(a.status, 200, "{name}");
    let tags: Vec<String> = serde_json::from_value(a.json()["tags"].clone()).unwrap();
    assert_eq!(a.json()["name"], repo);
    if let Some(tag) = &data.tag {
        assert!(tags.contains(tag), "{name}: {tags:?}");
    }
    if tags.len() > 1 {
        let a = reg.send("GET", &format!("/v2/{repo}/tags/list?n=1"), &[], b"");
        assert_eq!(a.json()["tags"], serde_json::json!([tags[0]]));
        let link = a.header("link").expect("a Link header to the next page");
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| panic!("{link}"));
        let a = reg.send("GET", &next, &[], b"");
        assert_eq!(a.json()["tags"][0], tags[1].as_str(), "{name}");
    }

    // Head and pull: manifests by digest and tag, blobs.
    for m in &data.manifests {
        for reference in std::iter::once(m.digest.as_str())
            .chain(data.tag.as_deref().filter(|_| m.digest == last.digest))
        {
            let url = format!("/v2/{repo}/manifests/{reference}");
            let accept = [("Accept", MT_INDEX), ("Accept", MT_IMAGE)];
            let h = reg.send("HEAD", &url, &accept, b"");
            assert_eq!(h.status, 200, "{name} {reference}");
            assert_eq!(h.header("docker-content-digest"), Some(m.digest.as_str()));
            assert_eq!(
                h.header("content-length"),
                Some(m.bytes.len().to_string().as_str())
            );
            let g = reg.send("GET", &url, &accept, b"");
            assert_eq!(g.status, 200);
            assert_eq!(g.header("content-type"), Some(m.media_type), "{name}");
            assert_eq!(g.body, m.bytes, "{name} {reference}");
        }
    }
    for (d, blob) in &data.blobs {
        let a = reg.send("GET", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("docker-content-digest"), Some(d.as_str()));
        assert_eq!(&a.body, blob);
    }

    // Referrers, all and filtered by artifactType.
    for (subject, expected) in &data.referrers {
        let a = reg.send("GET", &format!("/v2/{repo}/referrers/{subject}"), &[], b"");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some(MT_INDEX));
        let got = a.json();
        assert_eq!(got["schemaVersion"], 2);
        assert_eq!(got["mediaType"], MT_INDEX);
        let listed = got["manifests"].as_array().unwrap();
        assert_eq!(listed.len(), expected.len(), "{name}: {got}");
        for m in expected {
            let d = listed
                .iter()
                .find(|d| d["digest"] == m.digest.as_str())
                .unwrap_or_else(|| panic!("{name}: {} not in {got}", m.digest));
            assert_eq!(d["mediaType"], m.media_type);
            assert_eq!(d["size"], m.bytes.len());
            assert_eq!(
                d.get("artifactType").and_then(|t| t.as_str()),
                m.artifact_type.as_deref(),
                "{name}"
            );
            assert_eq!(d.get("annotations"), m.annotations.as_ref(), "{name}");
        }
        for t in [MT_EXAMPLE1, MT_EXAMPLE2] {
            let a = reg.send(
                "GET",
                &format!("/v2/{repo}/referrers/{subject}?artifactType={t}"),
                &[],
                b"",
            );
            assert_eq!(a.header("oci-filters-applied"), Some("artifactType"));
            let want = expected
                .iter()
                .filter(|m| m.artifact_type.as_deref() == Some(t))
                .count();
            assert_eq!(a.json()["manifests"].as_array().unwrap().len(), want);
        }
    }

    // Delete: the tag (then 404 by tag), manifests by digest in reverse order (then 404),
    // blobs (202 or already gone, then 404).
    if let Some(tag) = &data.tag {
        let a = reg.send("DELETE", &format!("/v2/{repo}/manifests/{tag}"), &[], b"");
        assert_eq!(a.status, 202, "{name}");
        let a = reg.send("HEAD", &format!("/v2/{repo}/manifests/{tag}"), &[], b"");
        assert_eq!(a.status, 404);
    }
    for m in data.manifests.iter().rev() {
        let url = format!("/v2/{repo}/manifests/{}", m.digest);
        let a = reg.send("DELETE", &url, &[], b"");
        assert!([202, 404].contains(&a.status), "{name}: {}", a.status);
        let a = reg.send("HEAD", &url, &[], b"");
        assert_eq!(a.status, 404);
        let a = reg.send("GET", &url, &[], b"");
        assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    }
    for d in data.blobs.keys() {
        let a = reg.send("DELETE", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
        assert!([202, 404].contains(&a.status), "{name}: {}", a.status);
        let a = reg.send("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
        assert_eq!(a.status, 404, "{name}");
    }
}

/// Manifests that are refused, with the spec's codes, and unknown names.
fn manifest_errors(reg: &Reg, repo: &str) {
    let mut data = Data::default();
    let m = data.image("errors", true, none());
    for blob in data.blobs.values() {
        reg.push_blob(repo, blob);
    }
    // The body does not hash to the digest in the URL.
    let mut padded = m.bytes.clone();
    padded.extend_from_slice(b"  ");
    let a = reg.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{}", m.digest),
        &[("Content-Type", MT_IMAGE)],
        &padded,
    );
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
    let a = reg.send(
        "HEAD",
        &format!("/v2/{repo}/manifests/{}", m.digest),
        &[],
        b"",
    );
    assert_eq!(a.status, 404);
    // A blob that is not here.
    let mut v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    v["layers"][0]["digest"] = digest(b"never pushed").into();
    let a = reg.send(
        "PUT",
        &format!("/v2/{repo}/manifests/missing-blob"),
        &[("Content-Type", MT_IMAGE)],
        v.to_string().as_bytes(),
    );
    assert_eq!(
        (a.status, a.code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    // Not a manifest; a Content-Type that contradicts mediaType; over the size limit.
    for (body, ct) in [
        (b"not json".to_vec(), MT_IMAGE),
        (m.bytes.clone(), MT_INDEX),
    ] {
        let a = reg.send(
            "PUT",
            &format!("/v2/{repo}/manifests/bad"),
            &[("Content-Type", ct)],
            &body,
        );
        assert_eq!((a.status, a.code().as_str()), (400, "MANIFEST_INVALID"));
    }
    let huge = vec![b' '; 5 << 20];
    let a = reg.send(
        "PUT",
        &format!("/v2/{repo}/manifests/huge"),
        &[("Content-Type", MT_IMAGE)],
        &huge,
    );
    assert_eq!(a.status, 413);
    // Unknown tag, digest, repository, and invalid names.
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/manifests/no-such-tag"),
        &[],
        b"",
    );
    assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/manifests/{}", digest(b"no such manifest")),
        &[],
        b"",
    );
    assert_eq!((a.status, a.code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let a = reg.send("GET", "/v2/no/such/repo/tags/list", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (404, "NAME_UNKNOWN"));
    let a = reg.send("GET", "/v2/Bad_Name/tags/list", &[], b"");
    assert_eq!((a.status, a.code().as_str()), (400, "NAME_INVALID"));
    let a = reg.send("GET", &format!("/v2/{repo}/manifests/-bad-tag"), &[], b"");
    assert_eq!((a.status, a.code().as_str()), (400, "TAG_INVALID"));
    let a = reg.send(
        "GET",
        &format!("/v2/{repo}/referrers/sha256:short"),
        &[],
        b"",
    );
    assert_eq!((a.status, a.code().as_str()), (400, "DIGEST_INVALID"));
}
