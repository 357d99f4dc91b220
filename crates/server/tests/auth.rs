//! Bearer tokens, roles and the audit log against a real server and a small OpenID Connect
//! provider of the test's own on loopback (orig: `DicomServer:Security`, `roles.json`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tessera_testkit::oidc::{TestAuthority, TestKey, now};
use tessera_testkit::server::{TestServer, command, dicom_multipart, eventually, testdata};

const AUDIENCE: &str = "tessera-test";

const ROLES: &str = r#"{"roles": [
    {"name": "reader", "dataActions": ["read"], "notDataActions": [], "scopes": ["/"]},
    {"name": "writer", "dataActions": ["write"], "notDataActions": [], "scopes": ["/"]},
    {"name": "deleter", "dataActions": ["delete"], "notDataActions": [], "scopes": ["/"]},
    {"name": "admin", "dataActions": ["*"], "notDataActions": [], "scopes": ["/"]},
    {"name": "curator", "dataActions": ["*"], "notDataActions": ["delete"], "scopes": ["/"]}
]}"#;

/// A server whose security trusts `authority`, with the roles above when `authorization`.
fn secured(dir: &Path, authority: &TestAuthority, authorization: bool) -> TestServer {
    let roles = dir.join("roles.json");
    std::fs::write(&roles, ROLES).unwrap();
    let enabled = if authorization { "true" } else { "false" };
    TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_tessera")),
        dir,
        &[
            ("RUST_LOG", "info"),
            ("DicomServer__Security__Enabled", "true"),
            (
                "DicomServer__Security__Authentication__Authority",
                &authority.url,
            ),
            ("DicomServer__Security__Authentication__Audience", AUDIENCE),
            ("DicomServer__Security__Authorization__Enabled", enabled),
            ("Tessera__Security__RolesFile", roles.to_str().unwrap()),
            ("Tessera__Security__KeyRefreshInterval", "00:00:01"),
        ],
    )
}

/// `METHOD path` with an optional bearer token: status, `WWW-Authenticate`, body. A POST
/// stores the sample `file`.
async fn call(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, String) {
    send(server, method, path, token, "blue-circle.dcm").await
}

async fn send(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    file: &str,
) -> (u16, Option<String>, String) {
    let mut request = reqwest::Client::new().request(method.clone(), server.url(path));
    if method == reqwest::Method::POST {
        let file = std::fs::read(testdata().join(file)).unwrap();
        let (body, content_type) = dicom_multipart("auth-test", &[file]);
        request = request.header("Content-Type", content_type).body(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.text().await.unwrap())
}

async fn get(server: &TestServer, path: &str, token: Option<&str>) -> u16 {
    call(server, reqwest::Method::GET, path, token).await.0
}

/// STOW of blue-circle: status and the stored instance's path (`/v2/studies/…`).
async fn stow(server: &TestServer, token: &str) -> (u16, String) {
    stow_file(server, token, "blue-circle.dcm").await
}

async fn stow_file(server: &TestServer, token: &str, file: &str) -> (u16, String) {
    let (status, _, body) = send(
        server,
        reqwest::Method::POST,
        "/v2/studies",
        Some(token),
        file,
    )
    .await;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let url = body["00081199"]["Value"][0]["00081190"]["Value"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = url
        .split_once("/v2/")
        .map(|(_, p)| format!("/v2/{p}"))
        .unwrap_or_default();
    (status, path)
}

async fn delete(server: &TestServer, path: &str, token: &str) -> u16 {
    call(server, reqwest::Method::DELETE, path, Some(token))
        .await
        .0
}

#[tokio::test]
async fn only_valid_tokens_from_the_authority_are_accepted() {
    let authority = TestAuthority::start(&[TestKey::rsa(), TestKey::ec()]);
    let dir = tempfile::tempdir().unwrap();
    let server = secured(dir.path(), &authority, false);
    let good = authority.claims(AUDIENCE, "alice", &[]);

    assert_eq!(get(&server, "/health/check", None).await, 200);
    let (status, challenge, body) = call(&server, reqwest::Method::GET, "/v2/studies", None).await;
    assert_eq!((status, challenge.as_deref()), (401, Some("Bearer")));
    assert_eq!(body, "Unauthorized");
    let (status, challenge, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/studies",
        Some("not-a-jwt"),
    )
    .await;
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Bearer error=\"invalid_token\""))
    );

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        TestKey::rsa().sign(&claims)
    };
    let refused = [
        ("wrong signature", TestKey::stranger("rsa-1").sign(&good)),
        (
            "unknown key",
            TestKey::stranger("somebody-else").sign(&good),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "http://127.0.0.1:1".into()),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = "someone-else".into()),
        ),
        (
            "expired",
            with(&|c| {
                c["nbf"] = (now() - 7200).into();
                c["exp"] = (now() - 3600).into();
            }),
        ),
        ("not yet valid", with(&|c| c["nbf"] = (now() + 3600).into())),
        ("no expiry", with(&|c| c["exp"] = Value::Null)),
    ];
    for (what, token) in &refused {
        let (status, challenge, body) =
            call(&server, reqwest::Method::GET, "/v2/studies", Some(token)).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(
            challenge.as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert_eq!(body, "Unauthorized", "{what}: the reason is not sent");
    }

    for key in [TestKey::rsa(), TestKey::ec()] {
        let status = get(&server, "/v2/studies", Some(&key.sign(&good))).await;
        assert!(matches!(status, 200 | 204), "{:?}: {status}", key.algorithm);
    }
    // Without authorization, any valid token may do everything.
    let token = TestKey::rsa().sign(&good);
    let (status, path) = stow(&server, &token).await;
    assert_eq!(status, 200);
    assert_eq!(delete(&server, &path, &token).await, 204);
}

#[tokio::test]
async fn a_key_published_after_start_up_is_fetched_and_unknown_keys_are_rate_limited() {
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let dir = tempfile::tempdir().unwrap();
    let server = secured(dir.path(), &authority, false);
    let claims = authority.claims(AUDIENCE, "bob", &[]);
    let status = get(&server, "/v2/studies", Some(&TestKey::rsa().sign(&claims))).await;
    assert!(matches!(status, 200 | 204));
    let rotated = TestKey::rsa_rotated().sign(&claims);

    // A burst of tokens naming an unknown key makes at most one fetch per refresh interval.
    let before = authority.jwks_requests();
    for _ in 0..10 {
        assert_eq!(get(&server, "/v2/studies", Some(&rotated)).await, 401);
    }
    assert!(authority.jwks_requests() - before <= 1);

    authority.publish(&TestKey::rsa_rotated());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = get(&server, "/v2/studies", Some(&rotated)).await;
    assert!(matches!(status, 200 | 204), "rotated key: {status}");
    let status = get(&server, "/v2/studies", Some(&TestKey::rsa().sign(&claims))).await;
    assert!(matches!(status, 200 | 204), "the first key still: {status}");
}

#[tokio::test]
async fn roles_grant_data_actions_and_the_audit_log_names_who_and_what() {
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let dir = tempfile::tempdir().unwrap();
    let server = secured(dir.path(), &authority, true);
    let token = |subject: &str, roles: &[&str]| {
        TestKey::rsa().sign(&authority.claims(AUDIENCE, subject, roles))
    };
    let admin = token("ada", &["admin"]);
    let reader = token("rita", &["reader"]);
    let writer = token("walt", &["writer"]);
    let deleter = token("dora", &["deleter"]);
    let curator = token("cora", &["curator"]);
    let nobody = token("nemo", &[]);

    let (status, path) = stow(&server, &writer).await;
    assert_eq!(status, 200);
    let mut requests = 1;
    let metadata = format!("{path}/metadata");
    let study = path.split('/').nth(3).unwrap().to_owned();
    let reads = [
        "/studies".to_owned(),
        format!("/studies?StudyInstanceUID={study}"),
        path.trim_start_matches("/v2").to_owned(),
        metadata.trim_start_matches("/v2").to_owned(),
        "/changefeed".to_owned(),
    ];
    for read in &reads {
        for (who, allowed) in [
            (&reader, true),
            (&admin, true),
            (&curator, true),
            (&writer, false),
            (&deleter, false),
            (&nobody, false),
        ] {
            let (status, challenge, _) = call(
                &server,
                reqwest::Method::GET,
                &format!("/v2{read}"),
                Some(who),
            )
            .await;
            requests += 1;
            if allowed {
                assert_eq!(status, 200, "GET {read}");
            } else {
                assert_eq!(status, 403, "GET {read}");
                assert_eq!(
                    challenge.as_deref(),
                    Some("Bearer error=\"insufficient_scope\"")
                );
            }
        }
    }
    for who in [&reader, &deleter, &nobody] {
        assert_eq!(stow(&server, who).await.0, 403);
        requests += 1;
    }
    for (who, file) in [(&admin, "green-square.dcm"), (&curator, "red-triangle.dcm")] {
        assert_eq!(stow_file(&server, who, file).await.0, 200);
        requests += 1;
    }
    for who in [&reader, &writer, &curator, &nobody] {
        assert_eq!(delete(&server, &path, who).await, 403);
        requests += 1;
    }
    assert_eq!(delete(&server, &path, &deleter).await, 204);
    requests += 1;
    let (status, path) = stow_file(&server, &admin, "layer1.dcm").await;
    assert_eq!(status, 200);
    assert_eq!(delete(&server, &path, &admin).await, 204);
    requests += 2;
    assert_eq!(get(&server, "/health/check", None).await, 200);

    let audit_lines = || {
        let log = server.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("tessera::audit"))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually("every audit line is logged", || {
        audit_lines().len() >= requests
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let audit = audit_lines();
    assert_eq!(
        audit.len(),
        requests,
        "one line per DICOMweb request, none for health"
    );
    let rita = audit
        .iter()
        .find(|l| l.contains("rita") && l.contains("/metadata"))
        .expect("rita's metadata read");
    for expected in [
        "rita-client",
        "GET",
        "/v2/studies/{study}/series/{series}/instances/{instance}/metadata",
        &study,
        "200",
        "duration_ms",
    ] {
        assert!(rita.contains(expected), "{rita} should hold {expected}");
    }
    let stowed = audit
        .iter()
        .find(|l| l.contains("walt"))
        .expect("walt's STOW");
    assert!(stowed.contains(&study), "{stowed}");
    let denied = audit
        .iter()
        .find(|l| l.contains("dora") && l.contains("POST"))
        .expect("dora's refused STOW");
    assert!(denied.contains("403"), "{denied}");
    assert!(
        audit.iter().all(|l| !l.contains("eyJ")),
        "no token in the audit log"
    );
}

#[tokio::test]
async fn with_security_disabled_everything_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let file = std::fs::read(testdata().join("blue-circle.dcm")).unwrap();
    let (status, body) = server.stow("/v2/studies", &[file]).await;
    assert_eq!(status, 200);
    let url = body["00081199"]["Value"][0]["00081190"]["Value"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    let status = reqwest::Client::new()
        .delete(&url)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);
}

#[test]
fn a_bad_security_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("DicomServer__Security__Enabled", "true"),
                ("DicomServer__Security__Authentication__Audience", "x"),
                (
                    "DicomServer__Security__Authentication__Authority",
                    "http://idp.example.com",
                ),
            ],
            "DicomServer__Security__Authentication__Authority",
        ),
        (
            &[("DicomServer__Security__Enabled", "true")],
            "DicomServer:Security:Authentication:Authority",
        ),
        (
            &[
                ("DicomServer__Security__Enabled", "true"),
                ("DicomServer__Security__Authentication__Audience", "x"),
                (
                    "DicomServer__Security__Authentication__Authority",
                    "https://idp.example.com",
                ),
                ("DicomServer__Security__Authorization__Enabled", "true"),
            ],
            "Tessera:Security:RolesFile",
        ),
    ];
    for (env, key) in cases {
        let output = command(
            Path::new(env!("CARGO_BIN_EXE_tessera")),
            dir.path(),
            &["serve", "--listen", "127.0.0.1:0"],
            env,
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr} should name {key}");
    }
}
