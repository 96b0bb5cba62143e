//! Staging buckets: the part of Cloud Storage that `gcloud run deploy --source` and `gcloud
//! run jobs deploy --source` use. gcloud makes a bucket `run-sources-PROJECT-REGION` if it is
//! missing, uploads the source as a zip object `services/NAME/STAMP-UUID.zip` (or `jobs/...`),
//! and names that object (bucket, name, generation) in the build it submits.
//!
//! Buckets and objects are kept in the shapes of the Cloud Storage JSON API v1 (`Bucket`,
//! `Object`: `kind`, `id`, `name`, `generation` and `size` as decimal strings, RFC 3339
//! times), in files under `DATA/builds/staging/BUCKET/` (`bucket.json`; per object a
//! `HASH.json` and its data `HASH.data`, `HASH` being the SHA-256 of the object name).
//! An object lives only until a build takes it ([`Staging::take_object`] moves its data into
//! the build), and a bucket holds at most [`MAX_OBJECTS`] objects: an upload past that removes
//! the oldest, so sources that no build took do not pile up.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The most objects one staging bucket keeps; older ones are removed by newer uploads.
pub const MAX_OBJECTS: usize = 16;

/// Errors of the staging buckets, in the terms Cloud Storage answers with.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// No such bucket or object (Cloud Storage's 404).
    #[error("{0}")]
    NotFound(String),
    /// The bucket exists already (Cloud Storage's 409).
    #[error("{0}")]
    Conflict(String),
    /// A name or request Cloud Storage would refuse (400).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing the staging directory failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StagingError {
    let what = what.to_string();
    move |source| StagingError::Io { what, source }
}

/// A bucket, as Cloud Storage's JSON API v1 writes `Bucket` (camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Always `storage#bucket`.
    pub kind: String,
    /// The bucket's name (Cloud Storage's id is its name).
    pub id: String,
    pub name: String,
    /// The project (Skiff namespace) that owns the bucket. Not a Cloud Storage field; a
    /// bucket list filters on it.
    pub project: String,
    /// The owning project's number, as a decimal string.
    pub project_number: String,
    /// The region it was created in, upper-case as Cloud Storage writes it (`US-CENTRAL1`).
    pub location: String,
    pub storage_class: String,
    pub metageneration: String,
    pub time_created: String,
    pub updated: String,
}

/// An object, as Cloud Storage's JSON API v1 writes `Object` (camelCase).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object {
    /// Always `storage#object`.
    pub kind: String,
    /// `BUCKET/NAME/GENERATION`.
    pub id: String,
    pub name: String,
    pub bucket: String,
    /// The object's generation: microseconds since the epoch at upload, as a decimal string.
    pub generation: String,
    pub metageneration: String,
    pub content_type: String,
    /// Bytes, as a decimal string.
    pub size: String,
    pub storage_class: String,
    pub time_created: String,
    pub updated: String,
    /// `sha256:HEX` of the data (not a Cloud Storage field: the source digest a build
    /// records).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// The staging buckets of one server, under `root` (`DATA/builds/staging`).
pub struct Staging {
    root: PathBuf,
    /// Serializes bucket creation and object replacement.
    lock: Mutex<()>,
}

/// Checks a bucket name by Cloud Storage's rules: 3 to 63 characters, lower-case letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn validate_bucket_name(name: &str) -> Result<(), StagingError> {
    let ok = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StagingError::Invalid(format!(
            "invalid bucket name {name:?}: use 3 to 63 lower-case letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )))
    }
}

/// Checks an object name by Cloud Storage's rules: 1 to 1024 bytes, no carriage return or
/// line feed; Skiff also refuses names with `..` segments or a leading `/`.
pub fn validate_object_name(name: &str) -> Result<(), StagingError> {
    let ok = !name.is_empty()
        && name.len() <= 1024
        && !name.contains(['\r', '\n'])
        && !name.starts_with('/')
        && !name.split('/').any(|s| s == "..");
    if ok {
        Ok(())
    } else {
        Err(StagingError::Invalid(format!(
            "invalid object name {name:?}: give 1 to 1024 bytes without line breaks, '..' segments or a leading '/'"
        )))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Staging {
    /// The staging buckets kept under `root` (created when first needed).
    pub fn new(root: PathBuf) -> Staging {
        Staging {
            root,
            lock: Mutex::new(()),
        }
    }

    /// Where uploads are spooled before [`Staging::insert_object`]: a new file beside the
    /// buckets, on the same file system.
    pub fn spool(&self) -> Result<tempfile::NamedTempFile, StagingError> {
        let tmp = self.root.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(io(tmp.display()))?;
        tempfile::NamedTempFile::new_in(&tmp).map_err(io(tmp.display()))
    }

    /// The directory of resumable upload sessions (`.uploads`): per session `ID.json` (the
    /// bucket, object name and content type it will make) and `ID.data` (the bytes so far).
    pub fn uploads_dir(&self) -> Result<PathBuf, StagingError> {
        let dir = self.root.join(".uploads");
        std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
        Ok(dir)
    }

    /// Removes resumable upload sessions untouched for longer than `max_age` (a client that
    /// went away mid-upload leaves one). Returns how many files it removed.
    pub fn sweep_uploads(&self, max_age: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.root.join(".uploads")) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= max_age);
            if old && std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
        n
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join(bucket)
    }

    fn object_paths(&self, bucket: &str, name: &str) -> (PathBuf, PathBuf) {
        let hash = hex::encode(Sha256::digest(name.as_bytes()));
        let dir = self.bucket_dir(bucket).join("objects");
        (
            dir.join(format!("{hash}.json")),
            dir.join(format!("{hash}.data")),
        )
    }

    /// The bucket `name`. Errors: [`StagingError::NotFound`].
    pub fn get_bucket(&self, name: &str) -> Result<Bucket, StagingError> {
        validate_bucket_name(name)?;
        let path = self.bucket_dir(name).join("bucket.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StagingError::Io {
                what: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StagingError::NotFound(
                format!("the specified bucket does not exist: {name}"),
            )),
            Err(e) => Err(io(path.display())(e)),
        }
    }

    /// Creates the bucket `name` owned by `project` (number `project_number`) in `location`.
    /// Errors: [`StagingError::Conflict`] when it exists, [`StagingError::Invalid`] names.
    pub fn insert_bucket(
        &self,
        project: &str,
        project_number: u64,
        name: &str,
        location: Option<&str>,
    ) -> Result<Bucket, StagingError> {
        validate_bucket_name(name)?;
        let _g = self.lock.lock().expect("staging lock");
        let dir = self.bucket_dir(name);
        if dir.join("bucket.json").is_file() {
            return Err(StagingError::Conflict(format!(
                "the bucket {name} exists already: choose another name"
            )));
        }
        std::fs::create_dir_all(dir.join("objects")).map_err(io(dir.display()))?;
        let t = now();
        let b = Bucket {
            kind: "storage#bucket".into(),
            id: name.into(),
            name: name.into(),
            project: project.into(),
            project_number: project_number.to_string(),
            location: location.unwrap_or(skiff_model::REGION).to_ascii_uppercase(),
            storage_class: "STANDARD".into(),
            metageneration: "1".into(),
            time_created: t.clone(),
            updated: t,
        };
        let path = dir.join("bucket.json");
        write_json(&path, &b)?;
        Ok(b)
    }

    /// The buckets `project` owns whose names start with `prefix`, by name.
    pub fn list_buckets(&self, project: &str, prefix: &str) -> Result<Vec<Bucket>, StagingError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(self.root.display())(e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.starts_with(prefix) {
                continue;
            }
            if let Ok(b) = self.get_bucket(&name) {
                if b.project == project {
                    out.push(b);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stores the spooled `data` (`size` bytes, `sha256:HEX` digest) as object `name` in
    /// `bucket`, replacing any object of that name with a new generation, then removes the
    /// bucket's oldest objects past [`MAX_OBJECTS`]. Errors: no such bucket, a bad name.
    pub fn insert_object(
        &self,
        bucket: &str,
        name: &str,
        content_type: &str,
        data: tempfile::NamedTempFile,
        size: u64,
        sha256: String,
    ) -> Result<Object, StagingError> {
        validate_object_name(name)?;
        self.get_bucket(bucket)?;
        let _g = self.lock.lock().expect("staging lock");
        let (meta, data_path) = self.object_paths(bucket, name);
        let dir = meta.parent().expect("objects dir");
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        let micros = chrono::Utc::now().timestamp_micros();
        let t = now();
        let o = Object {
            kind: "storage#object".into(),
            id: format!("{bucket}/{name}/{micros}"),
            name: name.into(),
            bucket: bucket.into(),
            generation: micros.to_string(),
            metageneration: "1".into(),
            content_type: if content_type.is_empty() {
                "application/octet-stream".into()
            } else {
                content_type.into()
            },
            size: size.to_string(),
            storage_class: "STANDARD".into(),
            time_created: t.clone(),
            updated: t,
            sha256,
        };
        data.persist(&data_path)
            .map_err(|e| io(data_path.display())(e.error))?;
        write_json(&meta, &o)?;
        self.trim(bucket)?;
        Ok(o)
    }

    /// The objects of `bucket`, oldest first.
    fn objects(&self, bucket: &str) -> Result<Vec<Object>, StagingError> {
        let dir = self.bucket_dir(bucket).join("objects");
        let mut out: Vec<Object> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(dir.display())(e)),
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(o) = std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Object>(&b).ok())
                    .ok_or(())
                {
                    out.push(o);
                }
            }
        }
        out.sort_by_key(|o| o.generation.parse::<i64>().unwrap_or(0));
        Ok(out)
    }

    fn trim(&self, bucket: &str) -> Result<(), StagingError> {
        let all = self.objects(bucket)?;
        let excess = all.len().saturating_sub(MAX_OBJECTS);
        for o in &all[..excess] {
            let (meta, data) = self.object_paths(bucket, &o.name);
            let _ = std::fs::remove_file(data);
            let _ = std::fs::remove_file(meta);
        }
        Ok(())
    }

    /// The object `name` in `bucket`. Errors: [`StagingError::NotFound`].
    pub fn get_object(&self, bucket: &str, name: &str) -> Result<Object, StagingError> {
        validate_object_name(name)?;
        self.get_bucket(bucket)?;
        let (meta, _) = self.object_paths(bucket, name);
        match std::fs::read(&meta) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StagingError::Io {
                what: meta.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StagingError::NotFound(
                format!("no such object: {bucket}/{name}"),
            )),
            Err(e) => Err(io(meta.display())(e)),
        }
    }

    /// Takes the object `name` (at `generation`, when given) out of `bucket` for a build: its
    /// data is moved to `dest` (on the same file system) and the object is gone. Errors: no
    /// such object or generation.
    pub fn take_object(
        &self,
        bucket: &str,
        name: &str,
        generation: Option<&str>,
        dest: &Path,
    ) -> Result<Object, StagingError> {
        let _g = self.lock.lock().expect("staging lock");
        let o = self.get_object(bucket, name)?;
        if let Some(g) = generation.filter(|g| !g.is_empty()) {
            if g != o.generation {
                return Err(StagingError::NotFound(format!(
                    "no such object: {bucket}/{name}#{g} (its generation is {}): upload the source again",
                    o.generation
                )));
            }
        }
        let (meta, data) = self.object_paths(bucket, name);
        std::fs::rename(&data, dest).map_err(io(data.display()))?;
        let _ = std::fs::remove_file(meta);
        Ok(o)
    }
}

/// An Artifact Registry repository, as `artifactregistry.googleapis.com/v1` writes
/// `Repository` (camelCase). Skiff keeps the images built into it in its own image store, as
/// `PROJECT/REPOSITORY/NAME`; the record is what gcloud looks for before a source deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// `projects/P/locations/L/repositories/R`.
    pub name: String,
    /// `DOCKER`.
    pub format: String,
    #[serde(default)]
    pub description: String,
    /// `STANDARD_REPOSITORY`.
    pub mode: String,
    pub create_time: String,
    pub update_time: String,
}

impl Staging {
    fn repository_path(&self, project: &str, location: &str, id: &str) -> PathBuf {
        self.root
            .join(".repositories")
            .join(project)
            .join(location)
            .join(format!("{id}.json"))
    }

    /// The Artifact Registry repository `id` of `project` in `location`. Errors:
    /// [`StagingError::NotFound`], [`StagingError::Invalid`] names.
    pub fn get_repository(
        &self,
        project: &str,
        location: &str,
        id: &str,
    ) -> Result<Repository, StagingError> {
        validate_repository_id(id)?;
        validate_repository_id(location)?;
        let path = self.repository_path(project, location, id);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StagingError::Io {
                what: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StagingError::NotFound(
                format!("Requested entity was not found: repository projects/{project}/locations/{location}/repositories/{id}"),
            )),
            Err(e) => Err(io(path.display())(e)),
        }
    }

    /// Creates the Docker repository `id` of `project` in `location`. Errors:
    /// [`StagingError::Conflict`] when it exists, [`StagingError::Invalid`] for a bad id or a
    /// format other than `DOCKER`.
    pub fn create_repository(
        &self,
        project: &str,
        location: &str,
        id: &str,
        format: &str,
        description: &str,
    ) -> Result<Repository, StagingError> {
        validate_repository_id(id)?;
        validate_repository_id(location)?;
        if !format.is_empty() && format != "DOCKER" {
            return Err(StagingError::Invalid(format!(
                "repository format {format:?} is not served: Skiff keeps DOCKER repositories only"
            )));
        }
        let _g = self.lock.lock().expect("staging lock");
        let path = self.repository_path(project, location, id);
        if path.is_file() {
            return Err(StagingError::Conflict(format!(
                "the repository projects/{project}/locations/{location}/repositories/{id} exists already"
            )));
        }
        let dir = path.parent().expect("repository dir");
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        let t = now();
        let r = Repository {
            name: format!("projects/{project}/locations/{location}/repositories/{id}"),
            format: "DOCKER".into(),
            description: description.into(),
            mode: "STANDARD_REPOSITORY".into(),
            create_time: t.clone(),
            update_time: t,
        };
        write_json(&path, &r)?;
        Ok(r)
    }
}

/// Checks a repository id (or location) by Artifact Registry's rules: 1 to 63 lower-case
/// letters, digits and `-`, starting with a letter.
pub fn validate_repository_id(id: &str) -> Result<(), StagingError> {
    let ok = (1..=63).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(StagingError::Invalid(format!(
            "invalid repository id {id:?}: use 1 to 63 lower-case letters, digits and '-', starting with a letter"
        )))
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StagingError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).expect("serializes"))
        .map_err(io(tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(io(path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(s: &Staging, bucket: &str, name: &str, text: &str) -> Object {
        let mut f = s.spool().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        s.insert_object(
            bucket,
            name,
            "application/zip",
            f,
            text.len() as u64,
            "sha256:x".into(),
        )
        .unwrap()
    }

    #[test]
    fn buckets_and_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path().join("staging"));
        assert!(matches!(
            s.get_bucket("run-sources-demo-us-central1"),
            Err(StagingError::NotFound(_))
        ));
        let b = s
            .insert_bucket(
                "demo",
                7,
                "run-sources-demo-us-central1",
                Some("us-central1"),
            )
            .unwrap();
        assert_eq!(b.location, "US-CENTRAL1");
        assert!(matches!(
            s.insert_bucket("demo", 7, "run-sources-demo-us-central1", None),
            Err(StagingError::Conflict(_))
        ));
        assert_eq!(s.list_buckets("demo", "run-sources").unwrap().len(), 1);
        assert!(s.list_buckets("other", "run-sources").unwrap().is_empty());
        for bad in ["UP", "ab", "-x-", "a/b"] {
            assert!(matches!(
                s.insert_bucket("demo", 7, bad, None),
                Err(StagingError::Invalid(_))
            ));
        }

        let o = upload(&s, &b.name, "services/web/1-a.zip", "zipdata");
        assert_eq!(o.size, "7");
        assert!(matches!(
            s.take_object(&b.name, &o.name, Some("1"), &dir.path().join("x")),
            Err(StagingError::NotFound(_))
        ));
        let dest = dir.path().join("taken");
        s.take_object(&b.name, &o.name, Some(&o.generation), &dest)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "zipdata");
        assert!(matches!(
            s.get_object(&b.name, &o.name),
            Err(StagingError::NotFound(_))
        ));
        assert!(matches!(
            s.insert_object(
                "run-sources-none",
                "x",
                "",
                s.spool().unwrap(),
                0,
                String::new()
            ),
            Err(StagingError::NotFound(_))
        ));
        assert!(matches!(
            upload_err(&s, &b.name, "../x"),
            StagingError::Invalid(_)
        ));
    }

    fn upload_err(s: &Staging, bucket: &str, name: &str) -> StagingError {
        s.insert_object(bucket, name, "", s.spool().unwrap(), 0, String::new())
            .unwrap_err()
    }

    #[test]
    fn abandoned_upload_sessions_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path().join("staging"));
        assert_eq!(s.sweep_uploads(std::time::Duration::ZERO), 0);
        let up = s.uploads_dir().unwrap();
        std::fs::write(up.join("a.json"), "{}").unwrap();
        std::fs::write(up.join("a.data"), "x").unwrap();
        assert_eq!(s.sweep_uploads(std::time::Duration::from_secs(3600)), 0);
        assert_eq!(s.sweep_uploads(std::time::Duration::ZERO), 2);
        assert_eq!(std::fs::read_dir(&up).unwrap().count(), 0);
    }

    #[test]
    fn a_bucket_keeps_the_newest_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Staging::new(dir.path().join("staging"));
        s.insert_bucket("demo", 7, "bkt", None).unwrap();
        let names: Vec<String> = (0..MAX_OBJECTS + 3).map(|i| format!("o{i}")).collect();
        for n in &names {
            upload(&s, "bkt", n, n);
            // Generations are microseconds: let each upload have its own.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let kept: Vec<String> = s
            .objects("bkt")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(kept, names[3..].to_vec());
    }
}
