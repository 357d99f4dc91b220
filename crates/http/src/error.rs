//! The one place where errors become HTTP responses: 4xx for what the client sent, 500 for
//! Tessera's own faults, 503 (with `Retry-After`) only when a dependency is unavailable or the
//! server is overloaded.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tessera_blob::BlobError;
use tessera_pixels::PixelError;
use tessera_service::{IndexError, ServiceError};

/// Seconds a client is asked to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

/// An error a handler returns. Server-side details are logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad UID, bad parameter, broken body, a limit crossed).
    #[error("{0}")]
    BadRequest(String),
    /// No acceptable representation can be produced.
    #[error("{0}")]
    NotAcceptable(String),
    /// The request's media type is not supported.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body is larger than `Tessera:Limits:MaxRequestBodyBytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request body stopped arriving for longer than `Tessera:Limits:BodyReadTimeout`.
    #[error("{0}")]
    RequestTimeout(String),
    /// The server is at a configured capacity; the client may retry.
    #[error("{0}")]
    Overloaded(String),
    /// A fault of Tessera's own (a broken invariant, a task that died).
    #[error("{0}")]
    Internal(String),
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
    /// Rendering or transcoding failed.
    #[error(transparent)]
    Pixels(#[from] PixelError),
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
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Service(error) => match error {
                ServiceError::NotFound(_) | ServiceError::FrameNotFound(_) => StatusCode::NOT_FOUND,
                ServiceError::FramesUnavailable => StatusCode::NOT_ACCEPTABLE,
                ServiceError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ServiceError::Index(IndexError::NotFound) => StatusCode::NOT_FOUND,
                ServiceError::Index(IndexError::Open { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Index(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Index(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ServiceError::Blob(BlobError::NotFound { .. }) => StatusCode::NOT_FOUND,
                ServiceError::Blob(
                    BlobError::Store { .. } | BlobError::Open { .. } | BlobError::Incomplete { .. },
                ) => StatusCode::SERVICE_UNAVAILABLE,
                ServiceError::Blob(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::AuthorityUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Pixels(error) => match error {
                PixelError::NoPixelData
                | PixelError::NoSuchFrame(_)
                | PixelError::NoSuchElement(_) => StatusCode::NOT_FOUND,
                // The original answers 406 for what it cannot render or transcode, too large
                // included (orig D.3).
                PixelError::Unsupported(_) | PixelError::TooLarge { .. } => {
                    StatusCode::NOT_ACCEPTABLE
                }
                PixelError::BadParameter(_) => StatusCode::BAD_REQUEST,
            },
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
        // Server-side details stay in the log; being at capacity is no secret.
        let message = if status.is_server_error() && !matches!(self, Self::Overloaded(_)) {
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
            status.canonical_reason().unwrap_or("error").to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, message).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_faults_our_faults_and_unavailability_are_told_apart() {
        let status = |error: ApiError| error.into_response().status().as_u16();
        assert_eq!(
            status(ApiError::Service(ServiceError::Corrupt("x".into()))),
            500
        );
        assert_eq!(
            status(ApiError::Service(ServiceError::Index(
                IndexError::AlreadyExists { creating: false }
            ))),
            500
        );
        assert_eq!(
            status(ApiError::Service(ServiceError::Index(IndexError::Corrupt(
                "x".into()
            )))),
            500
        );
        assert_eq!(
            status(ApiError::Service(ServiceError::Index(IndexError::NotFound))),
            404
        );
        let exists = BlobError::AlreadyExists {
            container: "c".into(),
            name: "n".into(),
        };
        assert_eq!(status(exists.into()), 500);
        let store = BlobError::Incomplete {
            container: "c".into(),
            name: "n".into(),
            expected: 1,
        };
        let response = ApiError::from(store).into_response();
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert_eq!(status(ApiError::PayloadTooLarge("x".into())), 413);
        assert_eq!(status(ApiError::RequestTimeout("x".into())), 408);
        assert_eq!(status(ApiError::Overloaded("x".into())), 503);
    }
}
