//! The Eventarc API's errors, shown to callers as Google's JSON error body
//! (`{"error":{"code":400,"message":"...","status":"INVALID_ARGUMENT"}}`).

/// An error of a trigger call.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The request is malformed: a bad trigger id, a missing or unsupported event filter, an
    /// unknown destination service or transport topic.
    #[error("{0}")]
    InvalidArgument(String),
    /// No trigger of that name.
    #[error("trigger {0} not found: `skiff triggers list` shows the existing ones")]
    NotFound(String),
    /// A trigger of that name exists already.
    #[error("trigger {0} already exists: delete it first or choose another name")]
    AlreadyExists(String),
    /// The object store failed.
    #[error("store: {0}")]
    Store(#[from] skiff_store::StoreError),
    /// The Pub/Sub broker refused or failed (creating the transport topic or subscription).
    #[error("pub/sub: {0}")]
    Pubsub(#[from] skiff_pubsub::PubsubError),
}

/// Result of a trigger call.
pub type Result<T> = std::result::Result<T, EventsError>;

impl EventsError {
    /// `InvalidArgument` with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        EventsError::InvalidArgument(message.into())
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            EventsError::InvalidArgument(_) => http::StatusCode::BAD_REQUEST,
            EventsError::NotFound(_) => http::StatusCode::NOT_FOUND,
            EventsError::AlreadyExists(_) => http::StatusCode::CONFLICT,
            EventsError::Store(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
            EventsError::Pubsub(e) => e.http_status(),
        }
    }

    /// Google's error body for this error.
    pub fn json(&self) -> serde_json::Value {
        let status = match self {
            EventsError::InvalidArgument(_) => "INVALID_ARGUMENT",
            EventsError::NotFound(_) => "NOT_FOUND",
            EventsError::AlreadyExists(_) => "ALREADY_EXISTS",
            EventsError::Store(_) => "INTERNAL",
            EventsError::Pubsub(e) => e.status_name(),
        };
        serde_json::json!({"error": {
            "code": self.http_status().as_u16(),
            "message": self.to_string(),
            "status": status,
        }})
    }
}
