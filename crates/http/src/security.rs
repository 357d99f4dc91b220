//! Bearer-token authentication, data-action authorization and the audit line, as one axum
//! middleware around the DICOMweb routes (`/health/check` stays outside it).
//!
//! A request without a bearer token gets 401 with `WWW-Authenticate: Bearer`; a malformed,
//! badly signed, expired or foreign token gets 401 with `error="invalid_token"`; a valid token
//! whose roles lack the route's data action gets 403 with `error="insufficient_scope"` (RFC
//! 6750 §3.1). Why a token was refused is logged, never sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera_auth::{AuthError, Authenticator, DataActions, Principal};
use tessera_core::{InstanceIdentifier, Uid};

use crate::ApiError;

/// The log target of the audit lines.
pub const AUDIT_TARGET: &str = "tessera::audit";

/// The most of a refused request's body that is read (and dropped) before answering.
const REFUSED_BODY_LIMIT: usize = 1 << 20;
/// The longest wait for that body.
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(5);

/// What the middleware enforces and records.
#[derive(Clone, Default)]
pub struct Security {
    /// Validates tokens; `None` when security is disabled and every request is let through.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Write one line per request on [`AUDIT_TARGET`].
    pub audit: bool,
}

/// Instances a handler stored, put in the response's extensions for the audit line.
#[derive(Clone, Debug)]
pub(crate) struct StoredInstances(pub Vec<InstanceIdentifier>);

/// The data action a request needs, by method: reads are GET/HEAD, STOW is POST, DELETE.
fn required(method: &Method) -> DataActions {
    match *method {
        Method::GET | Method::HEAD => DataActions::READ,
        Method::POST => DataActions::WRITE,
        Method::DELETE => DataActions::DELETE,
        _ => DataActions::ALL,
    }
}

/// The token of an `Authorization: Bearer …` header; `Err(true)` when a bearer header is
/// present but malformed, `Err(false)` when there is none.
fn bearer(headers: &HeaderMap) -> Result<&str, bool> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(false);
    };
    let value = value.to_str().map_err(|_| true)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(false);
    }
    let token = token.trim();
    if token.is_empty() {
        Err(true)
    } else {
        Ok(token)
    }
}

/// Authenticates and authorizes the request, then writes its audit line.
pub async fn guard(State(security): State<Security>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let method = parts.method.clone();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .map(|params| {
            params
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut principal: Option<Principal> = None;
    let response = match &security.authenticator {
        None => next.run(Request::from_parts(parts, body)).await,
        Some(authenticator) => {
            let (who, decision) = decide(authenticator, &parts.headers, &method).await;
            principal = who;
            match decision {
                Ok(()) => next.run(Request::from_parts(parts, body)).await,
                Err(error) => {
                    // Reading a small body first (briefly) lets a client that is still sending it
                    // see the status instead of a reset connection; a large one is not read.
                    let drain = axum::body::to_bytes(body, REFUSED_BODY_LIMIT);
                    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, drain).await;
                    error.into_response()
                }
            }
        }
    };
    if security.audit {
        audit(
            principal.as_ref(),
            &method,
            route.as_deref(),
            &params,
            &response,
            started,
        );
    }
    response
}

/// The caller, when a valid token names one, and whether it may make this request.
async fn decide(
    authenticator: &Authenticator,
    headers: &HeaderMap,
    method: &Method,
) -> (Option<Principal>, Result<(), ApiError>) {
    let token = match bearer(headers) {
        Ok(token) => token,
        Err(malformed) => {
            let refused = ApiError::Unauthorized {
                invalid_token: malformed,
            };
            return (None, Err(refused));
        }
    };
    let principal = match authenticator.authenticate(token).await {
        Ok(principal) => principal,
        Err(AuthError::InvalidToken(reason)) => {
            tracing::debug!(target: "tessera::auth", %reason, "token refused");
            let refused = ApiError::Unauthorized {
                invalid_token: true,
            };
            return (None, Err(refused));
        }
        Err(other) => return (None, Err(ApiError::AuthorityUnavailable(other.to_string()))),
    };
    let needed = required(method);
    if authenticator.allowed(&principal).contains(needed) {
        return (Some(principal), Ok(()));
    }
    tracing::debug!(
        target: "tessera::auth",
        subject = principal.subject.as_deref().unwrap_or("-"),
        needed = %needed,
        roles = ?principal.roles,
        "data action not granted"
    );
    (Some(principal), Err(ApiError::Forbidden))
}

/// One line: who, what (method, route template, UIDs), outcome and duration; no attribute
/// values and nothing of the token.
fn audit(
    principal: Option<&Principal>,
    method: &Method,
    route: Option<&str>,
    params: &[(String, String)],
    response: &Response,
    started: Instant,
) {
    let uid = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| match Uid::parse(value) {
                Ok(uid) => uid.as_str().to_owned(),
                Err(_) => "(invalid)".to_owned(),
            })
            .unwrap_or_else(|| "-".to_owned())
    };
    let stored = response
        .extensions()
        .get::<StoredInstances>()
        .map(|s| {
            s.0.iter()
                .map(|id| format!("{}/{}/{}", id.study, id.series, id.sop))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".to_owned());
    let subject = principal.and_then(|p| p.subject.as_deref()).unwrap_or("-");
    let client = principal
        .and_then(|p| p.client_id.as_deref())
        .unwrap_or("-");
    tracing::info!(
        target: AUDIT_TARGET,
        subject,
        client,
        method = %method,
        route = route.unwrap_or("-"),
        study = %uid("study"),
        series = %uid("series"),
        instance = %uid("instance"),
        stored = %stored,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_and_other_schemes_ignored() {
        let headers = |value: &str| {
            let mut map = HeaderMap::new();
            map.insert(header::AUTHORIZATION, value.parse().unwrap());
            map
        };
        assert_eq!(bearer(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(&headers("Bearer")), Err(true));
        assert_eq!(bearer(&headers("Basic dXNlcjpwYXNz")), Err(false));
        assert_eq!(bearer(&HeaderMap::new()), Err(false));
    }
}
