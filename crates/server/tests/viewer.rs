//! What web viewers need from a real server process: CORS (`DicomServer:Cors:*`), compressed
//! metadata, BulkDataURIs, rendered images and transcoding.

use std::path::Path;

use tessera_testkit::oidc::{TestAuthority, TestKey};
use tessera_testkit::server::TestServer;

const VIEWER: &str = "http://viewer.example:3000";

fn start(dir: &Path, env: &[(&str, &str)]) -> TestServer {
    TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir, env)
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A preflight is answered without a token even when security is on, allows the headers a
/// DICOMweb client sends, and simple requests carry the allowed origin and exposed headers.
#[tokio::test]
async fn cors_preflight_and_simple_request() {
    let dir = tempfile::tempdir().unwrap();
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let server = start(
        dir.path(),
        &[
            ("DicomServer__Cors__Origins__0", VIEWER),
            ("DicomServer__Cors__MaxAge", "600"),
            ("DicomServer__Security__Enabled", "true"),
            (
                "DicomServer__Security__Authentication__Authority",
                &authority.url,
            ),
            ("DicomServer__Security__Authentication__Audience", "viewer"),
        ],
    );
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "accept,authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(VIEWER)
    );
    let allowed = header(&preflight, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["accept", "authorization", "content-type"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    let methods = header(&preflight, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("DELETE"),
        "{methods}"
    );
    assert_eq!(
        header(&preflight, "access-control-max-age").as_deref(),
        Some("600")
    );

    // A simple request without a token is refused, and the browser may read why.
    let refused = client
        .get(server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some(VIEWER)
    );
    let exposed = header(&refused, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["etag", "location", "content-type"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    // Another origin gets no CORS headers.
    let foreign = client
        .get(server.url("/health/check"))
        .header("Origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&foreign, "access-control-allow-origin"), None);
}

/// Without `DicomServer:Cors:Origins` there are no CORS headers at all.
#[tokio::test]
async fn cors_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let response = reqwest::Client::new()
        .get(server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(tessera_testkit::server::testdata().join(name)).unwrap()
}

/// The study of blue-circle, green-square and red-triangle.
const STUDY: &str = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420";

/// Metadata is gzip-compressed when the client accepts it, and the same JSON otherwise.
#[tokio::test]
async fn metadata_is_gzipped_when_accepted() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let parts = ["blue-circle.dcm", "green-square.dcm", "red-triangle.dcm"].map(sample);
    assert_eq!(server.stow("/v2/studies", &parts).await.0, 200);
    let client = reqwest::Client::new();
    let url = server.url(&format!("/v2/studies/{STUDY}/metadata"));
    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), None);
    let plain: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(plain.as_array().unwrap().len(), 3);
    let gzipped = client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status().as_u16(), 200);
    assert_eq!(
        header(&gzipped, "content-encoding").as_deref(),
        Some("gzip")
    );
    let compressed = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    let unzipped: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(unzipped, plain);
}
