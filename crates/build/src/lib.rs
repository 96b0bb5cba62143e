//! `skiff-build`: container images built from source, as Cloud Run's `--source` deploys and
//! Cloud Build's `builds submit` do.
//!
//! - [`source`]: the source archive. The client packs a directory into a tar.gz, leaving out
//!   what `.gcloudignore` (else `.gitignore`) names, as gcloud does; the server unpacks it
//!   with every entry checked to stay inside the build's context directory.
//! - [`detect`]: the build plan. A `Dockerfile` is used as it is; without one, a Dockerfile is
//!   written for the language the directory holds (Python, Node.js, Go, a static site), the way
//!   Google Cloud's buildpacks decide.
//! - [`buildah`]: one build, run by Debian's `buildah` (a daemonless builder) in a network
//!   sandbox of Skiff's own, a cgroup with CPU, memory and pids limits, and a time limit,
//!   with its storage under `DATA/builds/storage`.
//! - [`builds`]: builds as stored objects (kind `builds`, Cloud Build's `Build` resource
//!   shape and status names), one at a time in arrival order, cancellable, each with its log
//!   in `DATA/builds/ID/log`; the built image is imported into Skiff's image store.
//! - [`staging`]: Cloud Storage–style staging buckets, where gcloud uploads the zip of a
//!   `gcloud run deploy --source` before it submits the build.

pub mod buildah;
pub mod builds;
pub mod detect;
pub mod source;
pub mod staging;

pub use builds::{Build, BuildRequest, BuildStatus, Builds, BuildsConfig, CachePrune};

/// Errors of source builds. Messages are one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The source archive or directory cannot be used (an entry escaping the context, a
    /// malformed archive, a directory that does not exist).
    #[error("invalid source: {0}")]
    Source(String),
    /// Nothing in the source says how to build it.
    #[error("{0}")]
    NoPlan(String),
    /// A request that cannot be built as given (a bad build argument, image name, timeout).
    #[error("{0}")]
    Invalid(String),
    /// No build has this id.
    #[error("build {0} not found: list builds with `skiff builds list`")]
    NotFound(String),
    /// `buildah` failed to start, or the build could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The built image did not import into Skiff's store.
    #[error("importing the built image: {0}")]
    Image(#[from] skiff_image::ImageError),
    /// The store refused a write.
    #[error("store: {0}")]
    Store(#[from] skiff_store::StoreError),
}

impl BuildError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
        let what = what.into();
        move |source| BuildError::Io { what, source }
    }
}

/// The current time as RFC 3339 with nanoseconds, as Cloud Build's timestamps are written.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
