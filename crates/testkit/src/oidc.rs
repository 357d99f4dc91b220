//! A small OpenID Connect provider on loopback for tests: a discovery document, a JWKS that can
//! gain keys while running (key rotation), and tokens signed with committed test keys.
//!
//! The keys under `crates/testkit/keys/` were made with `openssl genpkey` for these tests only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key of the test authority.
#[derive(Clone)]
pub struct TestKey {
    /// Its key id (`kid`).
    pub kid: String,
    /// RS256 or ES256.
    pub algorithm: Algorithm,
    key: EncodingKey,
}

impl TestKey {
    fn new(kid: &str, algorithm: Algorithm, pem: &str) -> Self {
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("a committed test key");
        Self {
            kid: kid.to_owned(),
            algorithm,
            key,
        }
    }

    /// The RSA key published at start.
    pub fn rsa() -> Self {
        Self::new("rsa-1", Algorithm::RS256, include_str!("../keys/rsa-1.pem"))
    }

    /// A second RSA key, for rotation.
    pub fn rsa_rotated() -> Self {
        Self::new("rsa-2", Algorithm::RS256, include_str!("../keys/rsa-2.pem"))
    }

    /// A P-256 key.
    pub fn ec() -> Self {
        Self::new("ec-1", Algorithm::ES256, include_str!("../keys/ec-1.pem"))
    }

    /// A key no authority publishes; with `kid`, it forges that key's signature.
    pub fn stranger(kid: &str) -> Self {
        Self::new(
            kid,
            Algorithm::RS256,
            include_str!("../keys/rsa-stranger.pem"),
        )
    }

    /// A JWT of `claims` signed with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign a test token")
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm).expect("a public key");
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }
}

struct Published {
    issuer: String,
    keys: Mutex<Vec<Jwk>>,
    jwks_requests: AtomicUsize,
}

/// The running provider; it stops when dropped with the process (its thread is detached).
pub struct TestAuthority {
    /// `http://127.0.0.1:PORT`: the authority and the issuer.
    pub url: String,
    published: Arc<Published>,
}

impl TestAuthority {
    /// Serves the discovery document and a JWKS holding `keys` on a random loopback port.
    pub fn start(keys: &[TestKey]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the authority");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let published = Arc::new(Published {
            issuer: url.clone(),
            keys: Mutex::new(keys.iter().map(TestKey::jwk).collect()),
            jwks_requests: AtomicUsize::new(0),
        });
        let state = published.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the authority");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = Router::new()
                    .route("/.well-known/openid-configuration", get(discovery))
                    .route("/keys", get(jwks))
                    .with_state(state);
                let _ = axum::serve(listener, app).await;
            });
        });
        Self { url, published }
    }

    /// Adds `key` to the JWKS, as an authority does before signing with a new key.
    pub fn publish(&self, key: &TestKey) {
        if let Ok(mut keys) = self.published.keys.lock() {
            keys.push(key.jwk());
        }
    }

    /// How many times the JWKS has been fetched.
    pub fn jwks_requests(&self) -> usize {
        self.published.jwks_requests.load(Ordering::SeqCst)
    }

    /// Claims of a token for `audience` and `subject` with `roles`, valid from a minute ago
    /// for an hour; change fields to make it invalid.
    pub fn claims(&self, audience: &str, subject: &str, roles: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.url,
            "aud": audience,
            "sub": subject,
            "azp": format!("{subject}-client"),
            "roles": roles,
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

async fn discovery(State(published): State<Arc<Published>>) -> Json<Value> {
    Json(json!({
        "issuer": published.issuer,
        "jwks_uri": format!("{}/keys", published.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
}

async fn jwks(State(published): State<Arc<Published>>) -> Json<JwkSet> {
    published.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let keys = published
        .keys
        .lock()
        .map(|keys| keys.clone())
        .unwrap_or_default();
    Json(JwkSet { keys })
}
