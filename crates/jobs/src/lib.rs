//! Jobs: Cloud Run Jobs' run-to-completion executions. An execution fans out into tasks that
//! run in the same isolated instances as services (no port), at most `parallelism` at once,
//! each retried up to `maxRetries` times; every state change is written to the store first,
//! so an execution interrupted by a server restart carries on where it was ([`Jobs::resume`]).
//!
//! [`scheduler`] fires Cloud Scheduler–style cron jobs that run a job or call a URL.

mod executor;
pub mod scheduler;

pub use executor::{FinishedHook, Jobs, JobsConfig, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] skiff_store::StoreError),
    #[error(transparent)]
    Image(#[from] skiff_image::ImageError),
}

impl From<skiff_model::InvalidInput> for JobError {
    fn from(e: skiff_model::InvalidInput) -> Self {
        JobError::Invalid(e.0)
    }
}
