//! The Pub/Sub API's errors: one enum, shown to gRPC callers as a `tonic::Status` with the
//! canonical code and to REST callers as Google's JSON error body
//! (`{"error":{"code":404,"message":"Resource not found (resource=t).","status":"NOT_FOUND"}}`).

/// An error of a Pub/Sub call. Messages follow the Pub/Sub service's own wording where it
/// has one (`Resource not found (resource=NAME).`).
#[derive(Debug, thiserror::Error)]
pub enum PubsubError {
    /// The topic, subscription or snapshot does not exist. `resource` is its last path segment.
    #[error("Resource not found (resource={resource}).")]
    NotFound { resource: String },
    /// A topic, subscription or snapshot of that name exists already.
    #[error("Resource already exists in the project (resource={resource}).")]
    AlreadyExists { resource: String },
    /// The request is malformed: a bad name, an out-of-range field, an unparsable filter.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the resource's state forbids it (a detached subscription).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller gave no credentials, or wrong ones.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but lacks the IAM permission the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// A `setIamPolicy` whose `etag` is not the current policy's (a concurrent change).
    #[error("{0}")]
    Aborted(String),
    /// The message store failed.
    #[error("message store: {0}")]
    Store(#[from] rusqlite::Error),
    /// The broker is shutting down or its writer stopped.
    #[error("the Pub/Sub broker is not running: {0}")]
    Unavailable(String),
}

/// Result of a broker call.
pub type Result<T> = std::result::Result<T, PubsubError>;

impl PubsubError {
    /// `NotFound` for a full resource name (`projects/P/topics/T`): Google names the last segment.
    pub fn not_found(name: &str) -> Self {
        PubsubError::NotFound {
            resource: name.rsplit('/').next().unwrap_or(name).to_string(),
        }
    }
    /// `AlreadyExists` for a full resource name.
    pub fn exists(name: &str) -> Self {
        PubsubError::AlreadyExists {
            resource: name.rsplit('/').next().unwrap_or(name).to_string(),
        }
    }
    /// `InvalidArgument` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        PubsubError::InvalidArgument(message.into())
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            PubsubError::NotFound { .. } => tonic::Code::NotFound,
            PubsubError::AlreadyExists { .. } => tonic::Code::AlreadyExists,
            PubsubError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            PubsubError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            PubsubError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            PubsubError::PermissionDenied(_) => tonic::Code::PermissionDenied,
            PubsubError::Aborted(_) => tonic::Code::Aborted,
            PubsubError::Store(_) => tonic::Code::Internal,
            PubsubError::Unavailable(_) => tonic::Code::Unavailable,
        }
    }

    /// The HTTP status REST callers get, as Google maps gRPC codes.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.code() {
            tonic::Code::NotFound => S::NOT_FOUND,
            tonic::Code::AlreadyExists => S::CONFLICT,
            tonic::Code::InvalidArgument => S::BAD_REQUEST,
            tonic::Code::FailedPrecondition => S::BAD_REQUEST,
            tonic::Code::Unauthenticated => S::UNAUTHORIZED,
            tonic::Code::PermissionDenied => S::FORBIDDEN,
            tonic::Code::Aborted => S::CONFLICT,
            tonic::Code::Unavailable => S::SERVICE_UNAVAILABLE,
            _ => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Google's canonical status name (`NOT_FOUND`, `ALREADY_EXISTS`, ...).
    pub fn status_name(&self) -> &'static str {
        match self.code() {
            tonic::Code::NotFound => "NOT_FOUND",
            tonic::Code::AlreadyExists => "ALREADY_EXISTS",
            tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
            tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
            tonic::Code::Unauthenticated => "UNAUTHENTICATED",
            tonic::Code::PermissionDenied => "PERMISSION_DENIED",
            tonic::Code::Aborted => "ABORTED",
            tonic::Code::Unavailable => "UNAVAILABLE",
            _ => "INTERNAL",
        }
    }

    /// Google's JSON error body for REST callers.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "code": self.http_status().as_u16(),
            "message": self.to_string(),
            "status": self.status_name(),
        }})
    }
}

impl From<PubsubError> for tonic::Status {
    fn from(e: PubsubError) -> Self {
        if matches!(e, PubsubError::Store(_)) {
            tracing::error!("pubsub: {e}");
        }
        tonic::Status::new(e.code(), e.to_string())
    }
}

impl axum::response::IntoResponse for PubsubError {
    fn into_response(self) -> axum::response::Response {
        if matches!(self, PubsubError::Store(_)) {
            tracing::error!("pubsub: {self}");
        }
        (self.http_status(), axum::Json(self.json())).into_response()
    }
}
