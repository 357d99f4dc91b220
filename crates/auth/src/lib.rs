//! Who may call Tessera, as the original server decided it: OAuth2 bearer tokens from any
//! OpenID Connect authority, and roles (`roles.json`) granting data actions.
//!
//! [`Authenticator::authenticate`] validates a token (RS256 or ES256, signed by a key from the
//! authority's JWKS, `iss` equal to the discovery document's issuer, `aud` one of the
//! audiences, `exp`/`nbf` within [`CLOCK_SKEW`]) and returns the [`Principal`];
//! [`Authenticator::allowed`] says which [`DataActions`] it may perform. No HTTP framework types
//! appear here: the HTTP crate maps the outcome to statuses.

mod keys;
pub mod roles;

use std::net::IpAddr;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use url::Url;

pub use keys::{FETCH_TIMEOUT, KEYS_MAX_AGE};
pub use roles::{DataActions, Role, Roles, RolesError};

/// Tolerance for the clocks of the authority and of Tessera on `exp` and `nbf`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// How tokens are checked and roles applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSettings {
    /// The OpenID Connect authority (`https`, or `http` on a loopback address).
    pub authority: Url,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// The claim that lists the principal's roles.
    pub roles_claim: String,
    /// The roles, when authorization is enabled; `None` lets any valid token do everything.
    pub roles: Option<Roles>,
    /// Least time between two key fetches caused by an unknown key id.
    pub key_refresh_interval: Duration,
}

/// Why a request cannot be authenticated. The reasons are for the server's log only.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, badly signed, expired, or not meant for this server.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The authority's keys could not be fetched, so no token can be checked.
    #[error("the authority's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// The settings cannot be used.
    #[error("{0}")]
    Configuration(String),
}

/// The caller a valid token names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The client application: `azp`, else `appid` (Entra ID v1), else `client_id`.
    pub client_id: Option<String>,
    /// The values of the roles claim.
    pub roles: Vec<String>,
}

/// Checks that an authority (or a JWKS address) is an absolute `https` URL, or `http` on a
/// loopback address, where no one else can see or alter the keys.
pub fn check_authority(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not an absolute URL ({e})"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err("expected an https URL (http only on a loopback address)".into()),
    }
}

/// Validates bearer tokens against one authority and applies the roles.
pub struct Authenticator {
    settings: AuthSettings,
    keys: keys::KeyCache,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    azp: Option<String>,
    appid: Option<String>,
    client_id: Option<String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

impl Authenticator {
    /// An authenticator; no key is fetched until the first token arrives.
    pub fn new(settings: AuthSettings) -> Result<Self, AuthError> {
        let keys = keys::KeyCache::new(&settings.authority, settings.key_refresh_interval)?;
        Ok(Self { settings, keys })
    }

    /// The principal of a valid `token` (the text after `Bearer `).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = |what: &str| AuthError::InvalidToken(what.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(invalid(&format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.as_deref();
        let set = self.keys.keys_for(kid).await?;
        let candidates = set.candidates(kid, header.alg);
        if candidates.is_empty() {
            return Err(invalid(&format!("no {:?} key with id {kid:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&set.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = CLOCK_SKEW.as_secs();
        let mut last = invalid("no key");
        for candidate in candidates {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => return Ok(self.principal(data.claims)),
                Err(error) => {
                    let signature = matches!(error.kind(), ErrorKind::InvalidSignature);
                    last = invalid(&error.to_string());
                    if !signature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(&self, claims: Claims) -> Principal {
        let roles = match claims.other.get(&self.settings.roles_claim) {
            Some(serde_json::Value::String(role)) => vec![role.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Principal {
            subject: claims.sub,
            client_id: claims.azp.or(claims.appid).or(claims.client_id),
            roles,
        }
    }

    /// What `principal` may do: everything without authorization, else its roles' union.
    pub fn allowed(&self, principal: &Principal) -> DataActions {
        match &self.settings.roles {
            None => DataActions::ALL,
            Some(roles) => roles.allowed(principal.roles.iter().map(String::as_str)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_must_be_https_or_loopback() {
        for good in [
            "https://login.microsoftonline.com/tenant/v2.0",
            "http://127.0.0.1:8081",
            "http://localhost/realms/x",
            "http://[::1]:9000",
        ] {
            assert!(check_authority(good).is_ok(), "{good}");
        }
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.1",
            "ftp://localhost",
            "login.microsoftonline.com",
            "",
        ] {
            assert!(check_authority(bad).is_err(), "{bad}");
        }
    }
}
