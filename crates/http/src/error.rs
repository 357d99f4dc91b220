//! The one place where errors become HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tessera_blob::BlobError;

/// An error a handler returns. Server-side details are logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A blob-store failure.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Blob(BlobError::NotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Blob(BlobError::AlreadyExists { .. }) => StatusCode::CONFLICT,
            Self::Blob(BlobError::Body(_)) => StatusCode::BAD_REQUEST,
            Self::Blob(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let reason = status.canonical_reason().unwrap_or("error");
        (status, reason).into_response()
    }
}
