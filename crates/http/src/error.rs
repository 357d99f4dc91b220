//! The one place where errors become HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tessera_blob::BlobError;
use tessera_service::ServiceError;

/// An error a handler returns. Server-side details are logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad UID, bad parameter, broken body).
    #[error("{0}")]
    BadRequest(String),
    /// No acceptable representation can be produced.
    #[error("{0}")]
    NotAcceptable(String),
    /// The request's media type is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A use case failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> Self {
        Self::Service(ServiceError::Blob(error))
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Service(ServiceError::NotFound(_) | ServiceError::FrameNotFound(_)) => {
                StatusCode::NOT_FOUND
            }
            Self::Service(ServiceError::FramesUnavailable) => StatusCode::NOT_ACCEPTABLE,
            Self::Service(ServiceError::Blob(BlobError::NotFound { .. })) => StatusCode::NOT_FOUND,
            Self::Service(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            self.to_string()
        };
        (status, message).into_response()
    }
}
