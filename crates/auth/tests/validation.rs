//! Token validation against a loopback OpenID Connect provider: the claims a principal is made
//! of, and tokens that must be refused whatever their signature.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tessera_auth::{AuthError, AuthSettings, Authenticator, DataActions, Roles};
use tessera_testkit::oidc::{TestAuthority, TestKey};

fn authenticator(
    authority: &TestAuthority,
    roles_claim: &str,
    roles: Option<Roles>,
) -> Authenticator {
    Authenticator::new(AuthSettings {
        authority: authority.url.parse().unwrap(),
        audiences: vec!["first".into(), "second".into()],
        roles_claim: roles_claim.into(),
        roles,
        key_refresh_interval: Duration::from_secs(300),
    })
    .unwrap()
}

fn changed(mut claims: Value, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    if let Value::Object(map) = &mut claims {
        change(map);
    }
    claims
}

#[tokio::test]
async fn principals_carry_subject_client_and_roles_from_the_configured_claim() {
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let roles = Roles::parse(
        r#"{"roles": [{"name": "globalReader", "dataActions": ["read"], "notDataActions": [], "scopes": ["/"]}]}"#,
    )
    .unwrap();
    let auth = authenticator(&authority, "role", Some(roles));
    let base = authority.claims("second", "user-1", &[]);

    // Entra ID v1 tokens name the client in `appid`; a single role may be a string.
    let v1 = changed(base.clone(), |c| {
        c.remove("azp");
        c.insert("appid".into(), "app-1".into());
        c.insert("role".into(), "globalreader".into());
    });
    let principal = auth.authenticate(&TestKey::rsa().sign(&v1)).await.unwrap();
    assert_eq!(principal.subject.as_deref(), Some("user-1"));
    assert_eq!(principal.client_id.as_deref(), Some("app-1"));
    assert_eq!(principal.roles, ["globalreader"]);
    assert_eq!(auth.allowed(&principal), DataActions::READ);

    // `client_id` as Keycloak and RFC 9068 put it; an audience list holding one of ours.
    let keycloak = changed(base.clone(), |c| {
        c.remove("azp");
        c.insert("client_id".into(), "viewer".into());
        c.insert("aud".into(), json!(["account", "first"]));
        c.insert("role".into(), json!(["globalReader", "other"]));
    });
    let principal = auth
        .authenticate(&TestKey::rsa().sign(&keycloak))
        .await
        .unwrap();
    assert_eq!(principal.client_id.as_deref(), Some("viewer"));
    assert_eq!(auth.allowed(&principal), DataActions::READ);

    // The `roles` claim is not the configured one here: no role, no action.
    let other_claim = changed(base, |c| {
        c.insert("roles".into(), json!(["globalReader"]));
    });
    let principal = auth
        .authenticate(&TestKey::rsa().sign(&other_claim))
        .await
        .unwrap();
    assert_eq!(auth.allowed(&principal), DataActions::NONE);
}

#[tokio::test]
async fn tokens_without_a_key_id_find_their_key() {
    let authority = TestAuthority::start(&[TestKey::rsa(), TestKey::ec()]);
    let auth = authenticator(&authority, "roles", None);
    let claims = authority.claims("first", "user-2", &[]);
    let key = EncodingKey::from_ec_pem(include_bytes!("../../testkit/keys/ec-1.pem")).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
    let principal = auth.authenticate(&token).await.unwrap();
    assert_eq!(auth.allowed(&principal), DataActions::ALL);
}

#[tokio::test]
async fn other_algorithms_are_refused_before_any_key_is_tried() {
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let auth = authenticator(&authority, "roles", None);
    let claims = authority.claims("first", "mallory", &[]);
    // HS256 with a guessable secret: the classic algorithm-confusion attempt.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(b"rsa-1").unwrap(),
    )
    .unwrap();
    // `alg: none`, unsigned.
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        TestKey::rsa().sign(&claims).split('.').nth(1).unwrap()
    );
    for token in [hs, none] {
        let error = auth.authenticate(&token).await.unwrap_err();
        assert!(matches!(error, AuthError::InvalidToken(_)), "{error}");
    }
    assert_eq!(authority.jwks_requests(), 0, "no key fetched for them");
}

#[tokio::test]
async fn an_unreachable_authority_is_unavailable_not_invalid() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let auth = Authenticator::new(AuthSettings {
        authority: url.parse().unwrap(),
        audiences: vec!["first".into()],
        roles_claim: "roles".into(),
        roles: None,
        key_refresh_interval: Duration::from_secs(300),
    })
    .unwrap();
    let token = TestKey::rsa().sign(&json!({"aud": "first", "exp": 4_000_000_000u64}));
    let error = auth.authenticate(&token).await.unwrap_err();
    assert!(matches!(error, AuthError::KeysUnavailable(_)), "{error}");
}
