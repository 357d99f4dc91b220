//! The `tessera` binary as an operator runs it: a real process, real files, real HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TESSERA: &str = env!("CARGO_BIN_EXE_tessera");
const DOC_BLOCK: &str = include_str!("../../config/tests/fixtures/blob-migration-doc-block.json");

/// `tessera ARGS` in `dir`, with only the given environment variables of ours.
fn tessera(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(TESSERA);
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.contains("__")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command
}

/// A running server that is killed when dropped.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut child = tessera(dir, &["serve", "--listen", "127.0.0.1:0"], env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tessera");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, address)) = line.split_once("listening on ") {
                let _ = tx.send(
                    address
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its address");
    Server { child, address }
}

#[test]
fn config_prints_effective_values_with_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("appsettings.json"), DOC_BLOCK).unwrap();
    let output = tessera(
        dir.path(),
        &["config"],
        &[("DicomServer__Services__BlobMigration__FormatType", "Dual")],
    )
    .output()
    .unwrap();
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
    let output = tessera(
        dir.path(),
        &["serve"],
        &[("DicomServer__Services__BlobMigration__FormatType", "Neww")],
    )
    .output()
    .unwrap();
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
    let output = tessera(
        dir.path(),
        &["serve"],
        &[
            ("Tessera__BlobStore", "az://"),
            ("BlobStore__ConnectionString", connection),
        ],
    )
    .output()
    .unwrap();
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
    let server = start(dir.path(), &[]);
    let response = reqwest::get(format!("http://{}/health/check", server.address))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("Healthy"));
    assert!(dir.path().join("data/blobs/dicomwebcontainer").is_dir());
    assert!(dir.path().join("data/blobs/metadatacontainer").is_dir());
}
