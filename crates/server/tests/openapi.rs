//! The OpenAPI document against the running server: Tessera serves the document the repository
//! keeps, and schemathesis (PyPI) sends generated requests to every documented operation for a
//! bounded number of cases and at most 45 s, checking that none answers 5xx and that every status, content type,
//! header and JSON body matches the document. The README's test command installs schemathesis
//! in the virtual environment it points `TESSERA_TEST_PYTHON` at; without it this is skipped
//! (or fails when services are required).

use std::path::{Path, PathBuf};

use tessera_testkit::server::{TestServer, testdata};

/// `st`, schemathesis's command, beside the test Python; `None` when the test is to be skipped.
fn schemathesis() -> Option<PathBuf> {
    let Ok(python) = std::env::var("TESSERA_TEST_PYTHON") else {
        if std::env::var("TESSERA_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!(
                "TESSERA_TEST_PYTHON is not set: the README's test command installs schemathesis"
            );
        }
        eprintln!("skipped: TESSERA_TEST_PYTHON is not set (the README's test command sets it)");
        return None;
    };
    let st = Path::new(&python).with_file_name("st");
    assert!(
        st.exists(),
        "{} is missing: install schemathesis",
        st.display()
    );
    Some(st)
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
async fn the_served_document_is_the_kept_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let served: serde_json::Value = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, kept);
}

#[tokio::test]
async fn generated_requests_get_no_5xx_and_answers_match_the_document() {
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    // Something to find, so that not every generated request ends in 404.
    let samples: Vec<Vec<u8>> = ["layer1.dcm", "red-triangle.dcm"]
        .iter()
        .map(|name| std::fs::read(testdata().join(name)).unwrap())
        .collect();
    assert_eq!(server.stow("/v2/studies", &samples).await.0, 200);

    let hooks = repository().join("tests/openapi");
    let output = tokio::process::Command::new(st)
        // Its cache (.schemathesis/) goes to the scratch directory, not the repository.
        .current_dir(dir.path())
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .args([
            "run",
            &server.url("/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            // The coverage phase's cases per operation are bounded by --max-examples; the
            // fuzzing phase runs until --max-time, which bounds the whole run.
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            "5",
            "--max-time",
            "45",
            "--request-timeout",
            "10",
            "--workers",
            "2",
            "--seed",
            "14",
            "--no-color",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
