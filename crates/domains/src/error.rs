//! Errors of domain mapping calls, shown to callers as Google's JSON error body
//! (`{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT"}}`).

/// An error of a domain mapping call.
#[derive(Debug, thiserror::Error)]
pub enum DomainsError {
    /// The request is malformed: the message names the field (`metadata.name: ...`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The service a mapping names does not exist.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No mapping of that domain in the project.
    #[error("domain mapping {domain} not found in project {project}: `skiff domain-mappings list` shows the existing ones")]
    NotFound {
        /// The domain asked for.
        domain: String,
        /// The project (namespace) asked in.
        project: String,
    },
    /// The domain is mapped already (and `spec.forceOverride` was not set).
    #[error("{0}")]
    AlreadyExists(String),
    /// The object store failed.
    #[error("store: {0}")]
    Store(#[from] skiff_store::StoreError),
}

/// Result of a domain mapping call.
pub type Result<T> = std::result::Result<T, DomainsError>;

impl DomainsError {
    /// `InvalidArgument` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        DomainsError::InvalidArgument(message.into())
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            DomainsError::InvalidArgument(_) => http::StatusCode::BAD_REQUEST,
            DomainsError::FailedPrecondition(_) => http::StatusCode::BAD_REQUEST,
            DomainsError::NotFound { .. } => http::StatusCode::NOT_FOUND,
            DomainsError::AlreadyExists(_) => http::StatusCode::CONFLICT,
            DomainsError::Store(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Google's error status name for this error (`INVALID_ARGUMENT`, `NOT_FOUND`, ...).
    pub fn status_name(&self) -> &'static str {
        match self {
            DomainsError::InvalidArgument(_) => "INVALID_ARGUMENT",
            DomainsError::FailedPrecondition(_) => "FAILED_PRECONDITION",
            DomainsError::NotFound { .. } => "NOT_FOUND",
            DomainsError::AlreadyExists(_) => "ALREADY_EXISTS",
            DomainsError::Store(_) => "INTERNAL",
        }
    }

    /// Google's error body for this error.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "code": self.http_status().as_u16(),
            "message": self.to_string(),
            "status": self.status_name(),
        }})
    }
}
