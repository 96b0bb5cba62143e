//! API errors in Google's shape: `{"error":{"code":404,"message":"...","status":"NOT_FOUND"}}`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::StatusCode;
use skiff_model::{ErrorBody, ErrorDetail, InvalidInput};

#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// Google's canonical status names for the HTTP codes the API uses.
pub fn status_name(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        413 => "OUT_OF_RANGE",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_u16(),
                message: self.message,
                status: status_name(self.code).to_string(),
            },
        };
        (self.code, Json(body)).into_response()
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        ApiError::invalid(e.0)
    }
}

impl From<skiff_store::StoreError> for ApiError {
    fn from(e: skiff_store::StoreError) -> Self {
        tracing::error!("store: {e}");
        ApiError::internal(e.to_string())
    }
}

impl From<skiff_image::ImageError> for ApiError {
    fn from(e: skiff_image::ImageError) -> Self {
        use skiff_image::ImageError as E;
        let code = match &e {
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::Io { .. } | E::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(code, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
