//! Interoperability: the Python `dicomweb-client` package (PyPI) drives the running server.
//! The README's test command installs it in a virtual environment and sets
//! `TESSERA_TEST_PYTHON`; without it this test is skipped (or fails when services are required).

use std::path::Path;

use tessera_testkit::oidc::{TestAuthority, TestKey};
use tessera_testkit::server::{TestServer, testdata};

/// The Python interpreter with dicomweb-client, or `None` when the test is to be skipped.
fn python() -> Option<String> {
    let Ok(python) = std::env::var("TESSERA_TEST_PYTHON") else {
        if std::env::var("TESSERA_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "TESSERA_TEST_PYTHON is not set: the README's test command installs dicomweb-client"
            );
        }
        eprintln!("skipped: TESSERA_TEST_PYTHON is not set (the README's test command sets it)");
        return None;
    };
    Some(python)
}

/// Runs the script against `server`, with `token` as its bearer token if given: whether it
/// passed, and its output.
fn run_script(python: &str, server: &TestServer, token: Option<&str>) -> (bool, String) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/dicomweb_client_check.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(server.url("/v2"))
        .arg(testdata())
        .args(token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.success() && stdout.contains("interop ok"),
        format!("{stdout}\n{stderr}"),
    )
}

#[test]
fn dicomweb_client_stores_searches_and_retrieves() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let (passed, output) = run_script(&python, &server, None);
    assert!(passed, "{output}");
}

#[test]
fn dicomweb_client_with_a_bearer_token() {
    let Some(python) = python() else { return };
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let dir = tempfile::tempdir().unwrap();
    let roles = dir.path().join("roles.json");
    std::fs::write(
        &roles,
        r#"{"roles": [{"name": "globalAdmin", "dataActions": ["*"], "notDataActions": [], "scopes": ["/"]}]}"#,
    )
    .unwrap();
    let server = TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_tessera")),
        dir.path(),
        &[
            ("DicomServer__Security__Enabled", "true"),
            (
                "DicomServer__Security__Authentication__Authority",
                &authority.url,
            ),
            ("DicomServer__Security__Authentication__Audience", "tessera"),
            ("DicomServer__Security__Authorization__Enabled", "true"),
            ("Tessera__Security__RolesFile", roles.to_str().unwrap()),
        ],
    );
    let token = TestKey::rsa().sign(&authority.claims("tessera", "interop", &["globalAdmin"]));
    let (passed, output) = run_script(&python, &server, None);
    assert!(
        !passed && output.contains("401"),
        "without a token: {output}"
    );
    let (passed, output) = run_script(&python, &server, Some(&token));
    assert!(passed, "{output}");
}
