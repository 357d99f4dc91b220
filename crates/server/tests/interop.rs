//! Interoperability: the Python `dicomweb-client` package (PyPI) drives the running server.
//! The README's test command installs it in a virtual environment and sets
//! `TESSERA_TEST_PYTHON`; without it this test is skipped (or fails when services are required).

use std::path::Path;

use tessera_testkit::server::{TestServer, testdata};

#[test]
fn dicomweb_client_stores_searches_and_retrieves() {
    let Ok(python) = std::env::var("TESSERA_TEST_PYTHON") else {
        if std::env::var("TESSERA_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "TESSERA_TEST_PYTHON is not set: the README's test command installs dicomweb-client"
            );
        }
        eprintln!("skipped: TESSERA_TEST_PYTHON is not set (the README's test command sets it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/dicomweb_client_check.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(server.url("/v2"))
        .arg(testdata())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("interop ok"),
        "{stdout}\n{stderr}"
    );
}
