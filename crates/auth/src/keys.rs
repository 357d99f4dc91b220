//! The authority's signing keys: OpenID Connect discovery, then its JWKS, cached.
//!
//! Keys are fetched on first use (an unreachable authority does not stop start-up), kept for
//! [`KEYS_MAX_AGE`], and fetched again when a token names a key id the cache does not hold (key
//! rotation), at most once per refresh interval, so tokens with made-up key ids cannot make
//! Tessera hammer the authority. A failed fetch keeps the keys already known.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use url::Url;

use crate::{AuthError, check_authority};

/// Keys older than this are fetched again on next use (as ASP.NET's automatic refresh).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Longest wait for the discovery document or the JWKS.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Before any fetch succeeded, failed fetches are retried at most this often.
const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(2);

/// A verification key and the algorithm it serves.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

/// What one successful fetch produced.
pub(crate) struct KeySet {
    /// The discovery document's `issuer`, which tokens' `iss` must equal.
    pub(crate) issuer: String,
    named: HashMap<String, Vec<SigningKey>>,
    unnamed: Vec<SigningKey>,
    fetched: Instant,
}

impl KeySet {
    /// The keys a token signed with `algorithm` under `kid` may have used.
    pub(crate) fn candidates(&self, kid: Option<&str>, algorithm: Algorithm) -> Vec<SigningKey> {
        let pool: Box<dyn Iterator<Item = &SigningKey>> = match kid {
            Some(kid) => Box::new(self.named.get(kid).into_iter().flatten()),
            None => Box::new(self.named.values().flatten().chain(&self.unnamed)),
        };
        pool.filter(|k| k.algorithm == algorithm).cloned().collect()
    }

    fn knows(&self, kid: Option<&str>) -> bool {
        kid.is_none_or(|kid| self.named.contains_key(kid))
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The cache of one authority's keys.
pub(crate) struct KeyCache {
    client: reqwest::Client,
    discovery: Url,
    refresh_interval: Duration,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching, so concurrent misses make one fetch; the last attempt's time.
    last_attempt: Mutex<Option<Instant>>,
}

impl KeyCache {
    pub(crate) fn new(authority: &Url, refresh_interval: Duration) -> Result<Self, AuthError> {
        let base = authority.as_str().trim_end_matches('/');
        let discovery = Url::parse(&format!("{base}/.well-known/openid-configuration"))
            .map_err(|e| AuthError::Configuration(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| AuthError::Configuration(e.to_string()))?;
        Ok(Self {
            client,
            discovery,
            refresh_interval,
            current: RwLock::new(None),
            last_attempt: Mutex::new(None),
        })
    }

    /// The keys, fetched first if none are held, if they are old, or if `kid` is unknown and
    /// the last fetch is older than the refresh interval.
    pub(crate) async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, AuthError> {
        let usable = |set: &KeySet| set.knows(kid) && set.fetched.elapsed() < KEYS_MAX_AGE;
        if let Some(set) = self.current.read().await.clone()
            && usable(&set)
        {
            return Ok(set);
        }
        let mut last_attempt = self.last_attempt.lock().await;
        let held = self.current.read().await.clone();
        if let Some(set) = &held
            && usable(set)
        {
            return Ok(set.clone());
        }
        let gap = if held.is_some() {
            self.refresh_interval
        } else {
            RETRY_WITHOUT_KEYS
        };
        if last_attempt.is_some_and(|at| at.elapsed() < gap) {
            return held.ok_or_else(|| {
                AuthError::KeysUnavailable("the last fetch failed moments ago".into())
            });
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(
                    issuer = %set.issuer,
                    keys = set.named.values().map(Vec::len).sum::<usize>() + set.unnamed.len(),
                    "fetched the authority's signing keys"
                );
                let set = Arc::new(set);
                *self.current.write().await = Some(set.clone());
                Ok(set)
            }
            Err(reason) => {
                tracing::warn!(
                    url = %self.discovery,
                    %reason,
                    "cannot fetch the authority's signing keys"
                );
                held.ok_or(AuthError::KeysUnavailable(reason))
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let discovery: Discovery = self.get_json(self.discovery.clone()).await?;
        let jwks_uri =
            check_authority(&discovery.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
        let jwks: JwkSet = self.get_json(jwks_uri).await?;
        let mut named: HashMap<String, Vec<SigningKey>> = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &jwks.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => continue,
            };
            let expected = KeyAlgorithm::from(algorithm);
            if jwk
                .common
                .key_algorithm
                .is_some_and(|declared| declared != expected)
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let key = SigningKey { algorithm, key };
            match &jwk.common.key_id {
                Some(kid) => named.entry(kid.clone()).or_default().push(key),
                None => unnamed.push(key),
            }
        }
        Ok(KeySet {
            issuer: discovery.issuer,
            named,
            unnamed,
            fetched: Instant::now(),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: Url) -> Result<T, String> {
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: status {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }
}
