//! The base of the URLs Tessera hands out (RetrieveURL, `Location`).
//!
//! A configured `Tessera:PublicBaseUrl` wins. Otherwise the request's `Host`, `X-Forwarded-Host`
//! and `X-Forwarded-Proto` are used only when `Tessera:TrustForwardedHeaders` says a proxy in
//! front sets them, and only after validation; by default the URL is the address the connection
//! came in on, which a client cannot forge.

use std::net::SocketAddr;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use tessera_service::ApiVersion;

use crate::{ApiError, AppState};

/// How base URLs are built (from configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublicUrl {
    /// `Tessera:PublicBaseUrl`.
    pub base: Option<url::Url>,
    /// `Tessera:TrustForwardedHeaders`.
    pub trust_forwarded_headers: bool,
}

/// The local address a connection was accepted on, added to each request by the server loop.
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub SocketAddr);

/// Whether `host` is a plain `host[:port]` authority: a name, an IPv4 address or a bracketed
/// IPv6 address, and a port; nothing that could carry a path, user info or markup.
fn valid_authority(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    port_ok && name_ok
}

impl PublicUrl {
    /// `scheme://authority[/path]/v{n}` for a request.
    pub fn base(
        &self,
        headers: &HeaderMap,
        local: Option<SocketAddr>,
        version: ApiVersion,
    ) -> String {
        let version = match version {
            ApiVersion::V1 => "v1",
            ApiVersion::V2 => "v2",
        };
        if let Some(base) = &self.base {
            return format!("{}/{version}", base.as_str().trim_end_matches('/'));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|h| h.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
        };
        let local = local
            .map(|a| a.to_string())
            .unwrap_or_else(|| "localhost".to_owned());
        if !self.trust_forwarded_headers {
            return format!("http://{local}/{version}");
        }
        let scheme = match header("x-forwarded-proto")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("https") => "https",
            _ => "http",
        };
        let host = header("x-forwarded-host")
            .filter(|h| valid_authority(h))
            .or_else(|| header("host").filter(|h| valid_authority(h)))
            .map(str::to_owned)
            .unwrap_or(local);
        format!("{scheme}://{host}/{version}")
    }
}

/// The base URL of the request being served (`…/v1` or `…/v2`).
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let version = parts
            .extensions
            .get::<ApiVersion>()
            .copied()
            .unwrap_or(ApiVersion::V1);
        let local = parts.extensions.get::<LocalAddr>().map(|l| l.0);
        Ok(Self(state.public_url.base(&parts.headers, local, version)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn untrusted_headers_are_ignored_and_trusted_ones_validated() {
        let local = Some(SocketAddr::from(([127, 0, 0, 1], 8080)));
        let forged = headers(&[
            ("host", "evil.example\"><script>"),
            ("x-forwarded-proto", "javascript"),
        ]);
        let default = PublicUrl::default();
        assert_eq!(
            default.base(&forged, local, ApiVersion::V1),
            "http://127.0.0.1:8080/v1"
        );
        let trusted = PublicUrl {
            base: None,
            trust_forwarded_headers: true,
        };
        assert_eq!(
            trusted.base(&forged, local, ApiVersion::V2),
            "http://127.0.0.1:8080/v2"
        );
        let proxied = headers(&[
            ("host", "inner:80"),
            ("x-forwarded-host", "pacs.example.org"),
            ("x-forwarded-proto", "https"),
        ]);
        assert_eq!(
            trusted.base(&proxied, local, ApiVersion::V1),
            "https://pacs.example.org/v1"
        );
        let v6 = headers(&[("host", "[::1]:8080")]);
        assert_eq!(
            trusted.base(&v6, local, ApiVersion::V1),
            "http://[::1]:8080/v1"
        );
        let configured = PublicUrl {
            base: Some("https://pacs.example.org/dicom/".parse().unwrap()),
            trust_forwarded_headers: false,
        };
        assert_eq!(
            configured.base(&proxied, local, ApiVersion::V1),
            "https://pacs.example.org/dicom/v1"
        );
    }

    #[test]
    fn authorities_are_checked() {
        for good in [
            "example.org",
            "example.org:8080",
            "10.0.0.1",
            "[::1]",
            "[fe80::1]:443",
        ] {
            assert!(valid_authority(good), "{good}");
        }
        for bad in [
            "",
            "a/b",
            "user@host",
            "host:",
            "host:123456",
            "[::zz]",
            "a b",
            "host:80:80",
        ] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }
}
