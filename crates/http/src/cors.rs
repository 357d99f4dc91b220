//! Cross-origin resource sharing for web viewers (OHIF and the like), with tower-http's
//! `CorsLayer`. It wraps the whole router, so a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered before the security middleware could ask it for a
//! token: browsers never send credentials on a preflight.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

/// Request headers every preflight allows: what a DICOMweb client sends.
const ALWAYS_ALLOWED: [HeaderName; 3] =
    [header::ACCEPT, header::AUTHORIZATION, header::CONTENT_TYPE];
/// Response headers a script may read.
const EXPOSED: [HeaderName; 3] = [header::ETAG, header::LOCATION, header::CONTENT_TYPE];
/// Methods allowed when none are configured.
const DEFAULT_METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
];

/// The CORS policy as configured (`DicomServer:Cors:*`); no origins means CORS is off.
#[derive(Clone, Debug, Default)]
pub struct CorsPolicy {
    /// Allowed origins, or `*` for any.
    pub origins: Vec<String>,
    /// Request headers allowed besides `Accept`, `Authorization` and `Content-Type`, or `*`.
    pub headers: Vec<String>,
    /// Allowed methods; empty means GET, HEAD, POST, PUT and DELETE.
    pub methods: Vec<String>,
    /// How long a preflight's answer may be cached.
    pub max_age: Option<Duration>,
    /// Whether credentials may be sent cross-origin.
    pub allow_credentials: bool,
}

/// A CORS value that is not a valid origin, header name or method.
#[derive(Debug, thiserror::Error)]
#[error("invalid CORS {what}: {value:?}")]
pub struct InvalidCors {
    what: &'static str,
    value: String,
}

/// A checked CORS policy, ready to wrap the router.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    layer: Option<CorsLayer>,
}

impl Cors {
    /// Checks `policy`; every origin, header name and method must be valid.
    pub fn new(policy: &CorsPolicy) -> Result<Self, InvalidCors> {
        Ok(Self {
            layer: policy.layer()?,
        })
    }

    /// The layer, or `None` when CORS is off.
    pub(crate) fn layer(&self) -> Option<CorsLayer> {
        self.layer.clone()
    }
}

impl CorsPolicy {
    fn layer(&self) -> Result<Option<CorsLayer>, InvalidCors> {
        if self.origins.is_empty() {
            return Ok(None);
        }
        let invalid = |what, value: &str| InvalidCors {
            what,
            value: value.to_owned(),
        };
        let any = |list: &[String]| list.iter().any(|v| v == "*");
        // `*` cannot be sent with credentials (Fetch standard), so the request's own origin and
        // headers are echoed then, as ASP.NET's policy builder does.
        let origin = if any(&self.origins) {
            if self.allow_credentials {
                AllowOrigin::mirror_request()
            } else {
                AllowOrigin::any()
            }
        } else {
            let list = self
                .origins
                .iter()
                .map(|o| HeaderValue::from_str(o).map_err(|_| invalid("origin", o)))
                .collect::<Result<Vec<_>, _>>()?;
            AllowOrigin::list(list)
        };
        let headers = if any(&self.headers) {
            AllowHeaders::mirror_request()
        } else {
            let mut list = ALWAYS_ALLOWED.to_vec();
            for h in &self.headers {
                let name =
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| invalid("header", h))?;
                if !list.contains(&name) {
                    list.push(name);
                }
            }
            AllowHeaders::list(list)
        };
        let methods = if self.methods.is_empty() {
            DEFAULT_METHODS.to_vec()
        } else {
            self.methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| invalid("method", m)))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut layer = CorsLayer::new()
            .allow_origin(origin)
            .allow_headers(headers)
            .allow_methods(methods)
            .expose_headers(ExposeHeaders::list(EXPOSED))
            .allow_credentials(self.allow_credentials);
        if let Some(age) = self.max_age {
            layer = layer.max_age(age);
        }
        Ok(Some(layer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_origins() {
        assert!(CorsPolicy::default().layer().unwrap().is_none());
    }

    #[test]
    fn any_origin_with_credentials_is_accepted() {
        let cors = CorsPolicy {
            origins: vec!["*".into()],
            headers: vec!["*".into()],
            allow_credentials: true,
            ..CorsPolicy::default()
        };
        assert!(cors.layer().unwrap().is_some());
    }

    #[test]
    fn bad_method_is_an_error() {
        let cors = CorsPolicy {
            origins: vec!["http://a.example".into()],
            methods: vec!["G ET".into()],
            ..CorsPolicy::default()
        };
        assert!(cors.layer().is_err());
    }
}
