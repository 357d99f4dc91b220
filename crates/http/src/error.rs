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
    /// No bearer token (`invalid_token: false`), or one that is not valid.
    #[error("Unauthorized")]
    Unauthorized {
        /// Whether a token was presented and refused (RFC 6750 `error="invalid_token"`).
        invalid_token: bool,
    },
    /// A valid token whose roles do not grant the request's data action.
    #[error("Forbidden")]
    Forbidden,
    /// The authority's signing keys cannot be fetched, so no token can be checked.
    #[error("{0}")]
    AuthorityUnavailable(String),
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
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::AuthorityUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        // RFC 6750 §3: the challenge, with no description of why a token was refused.
        let challenge = match &self {
            Self::Unauthorized {
                invalid_token: false,
            } => Some("Bearer"),
            Self::Unauthorized {
                invalid_token: true,
            } => Some("Bearer error=\"invalid_token\""),
            Self::Forbidden => Some("Bearer error=\"insufficient_scope\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            let headers = [(axum::http::header::WWW_AUTHENTICATE, challenge)];
            return (status, headers, self.to_string()).into_response();
        }
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            self.to_string()
        };
        (status, message).into_response()
    }
}
