//! skiff-registry: images from OCI distribution registries.
//!
//! - [`pull`]: pull `HOST[:PORT]/REPO[:TAG|@DIGEST]` with the `oci-client` crate (image indexes
//!   resolved to this host's platform, OCI and Docker v2 schema 2 manifests), download only the
//!   blobs the image store lacks, several at once, each verified against its digest, and import
//!   the result into the store (which verifies again and unpacks each layer once).
//! - [`serve`]: Skiff as a registry itself (the distribution spec's `/v2/` API) storing
//!   pushed images into the same store.
//! - [`login`]: check credentials as `docker login` does before Skiff keeps them.
//! - [`settings`]: per-registry settings Skiff keeps in `DATA/registries.json` (credentials
//!   from `skiff registries login`, plain HTTP, a CA file) and the credential files other
//!   tools write (`$REGISTRY_AUTH_FILE`, containers' `auth.json`, `~/.docker/config.json`).

mod error;
pub mod login;
pub mod pull;
pub mod serve;
pub mod settings;

pub use error::RegistryError;
pub use login::{check_login, is_insecure};
pub use pull::{
    is_loopback, is_registry_reference, ProgressSink, PullProgress, Pulled, Puller, PROGRESS_STEP,
};
pub use settings::{Credentials, Registries, RegistrySettings};
