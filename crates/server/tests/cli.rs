//! The `tessera` binary as an operator runs it: a real process, real files, real HTTP.

use std::path::Path;

use tessera_testkit::server::{TestServer, command};

const DOC_BLOCK: &str = include_str!("../../config/tests/fixtures/blob-migration-doc-block.json");

fn tessera(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
    command(Path::new(env!("CARGO_BIN_EXE_tessera")), dir, args, env)
}

#[test]
fn config_prints_effective_values_with_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("appsettings.json"), DOC_BLOCK).unwrap();
    let env = [("DicomServer__Services__BlobMigration__FormatType", "Dual")];
    let output = tessera(dir.path(), &["config"], &env).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("DicomServer:Services:BlobMigration:FormatType ")
            .contains("= Dual  (environment DicomServer__Services__BlobMigration__FormatType)"),
        "{text}"
    );
    assert!(
        line("DicomServer:Services:BlobMigration:CleanupFilterTimeStamp ")
            .contains("2022-08-01T00:00:00+00:00  (appsettings.json)"),
        "{text}"
    );
    assert!(
        line("Tessera:Listen ").contains("127.0.0.1:8080  (default)"),
        "{text}"
    );
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("DicomServer__Services__BlobMigration__FormatType", "Neww")];
    let output = tessera(dir.path(), &["serve"], &env).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("DicomServer__Services__BlobMigration__FormatType")
            && stderr.contains("Neww"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_blob_store_stops_start_up_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let connection = "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1";
    let env = [
        ("Tessera__BlobStore", "az://"),
        ("BlobStore__ConnectionString", connection),
    ];
    let output = tessera(dir.path(), &["serve"], &env).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("http://127.0.0.1:9/devstoreaccount1"),
        "{stderr}"
    );
    assert!(!stderr.contains("a2V5"), "the key leaked: {stderr}");
}

#[tokio::test]
async fn serve_runs_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let response = reqwest::get(server.url("/health/check")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("Healthy"));
    assert!(dir.path().join("data/blobs/dicomwebcontainer").is_dir());
    assert!(dir.path().join("data/blobs/metadatacontainer").is_dir());
    assert!(dir.path().join("data/index.db").is_file());
}
