//! `/metrics` and the health endpoints against a real server: a STOW and a WADO move the
//! request, byte and blob-store counters, labels carry route templates and never UIDs, and
//! readiness fails (while liveness holds) when the blob store does not answer.

use std::path::Path;

use tessera_testkit::server::{TestServer, testdata};
use tessera_testkit::synthetic::Synthetic;

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

async fn scrape(server: &TestServer) -> String {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

/// The value of the sample whose name and labels are exactly `series` (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of metric `name` whose labels contain each of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_stow_and_a_wado_move_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(tessera(), dir.path(), &[]);
    let before = scrape(&server).await;
    assert_eq!(value(&before, "tessera_stored_bytes_total"), 0.0);

    let synthetic = Synthetic::new("1.2.3.1300", "1.2.3.1300.1", "1.2.3.1300.1.1");
    let bytes = synthetic.bytes();
    let sample = std::fs::read(testdata().join("blue-circle.dcm")).unwrap();
    let (status, body) = server
        .stow("/v1/studies", &[bytes.clone(), sample.clone()])
        .await;
    assert_eq!(status, 200, "{body}");
    let instance = format!(
        "/v1/studies/{}/series/{}/instances/{}",
        synthetic.study, synthetic.series, synthetic.sop
    );
    let response = reqwest::Client::new()
        .get(server.url(&instance))
        .header("Accept", "application/dicom")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served = response.bytes().await.unwrap();
    assert!(served == bytes.as_slice());
    let missing = reqwest::get(server.url("/v1/studies/1.2.3.404/metadata"))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let after = scrape(&server).await;
    assert_eq!(
        value(
            &after,
            r#"tessera_http_requests_total{method="POST",route="/v1/studies",status="200"}"#
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            r#"tessera_http_requests_total{method="GET",route="/v1/studies/{study}/series/{series}/instances/{instance}",status="200"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            r#"tessera_http_requests_total{method="GET",route="/v1/studies/{study}/metadata",status="404"}"#
        ),
        1.0
    );
    assert!(
        sum(
            &after,
            "tessera_http_request_duration_seconds_count",
            &[r#"route="/v1/studies""#]
        ) >= 1.0
    );
    assert!(
        after.contains("tessera_http_request_duration_seconds_bucket{"),
        "latency is a histogram"
    );
    assert!(after.contains("# HELP tessera_http_requests_total "));
    assert!(after.contains("# TYPE tessera_http_request_duration_seconds histogram"));
    for uid in [&synthetic.study, &synthetic.sop, &"1.2.3.404".to_owned()] {
        assert!(!after.contains(uid.as_str()), "a UID in a label: {uid}");
    }
    assert_eq!(value(&after, "tessera_instances_stored_total"), 2.0);
    assert_eq!(
        value(&after, "tessera_stored_bytes_total"),
        (bytes.len() + sample.len()) as f64
    );
    assert_eq!(
        value(&after, r#"tessera_served_bytes_total{kind="file"}"#),
        bytes.len() as f64
    );
    assert!(
        sum(
            &after,
            "tessera_blob_calls_total",
            &[r#"backend="filesystem""#, r#"operation="put""#]
        ) >= 4.0,
        "two files and two metadata blobs were put"
    );
    assert!(
        sum(
            &after,
            "tessera_blob_bytes_written_total",
            &[r#"backend="filesystem""#]
        ) >= (bytes.len() + sample.len()) as f64
    );
    assert!(
        sum(
            &after,
            "tessera_blob_bytes_read_total",
            &[r#"backend="filesystem""#]
        ) >= bytes.len() as f64
    );
    assert_eq!(
        sum(&after, "tessera_blob_errors_total", &[]),
        0.0,
        "a missing blob is an answer, not an error"
    );
    assert_eq!(value(&after, "tessera_uploads_in_flight"), 0.0);
    assert!(value(&after, "tessera_uploads_limit") > 0.0);
    assert!(value(&after, "tessera_index_pool_connections") >= 1.0);
    assert!(value(&after, "tessera_index_pool_max_connections") >= 1.0);
    assert!(after.contains("tessera_old_name_fallback_reads_total"));

    for path in ["/health/live", "/health/ready", "/health/check"] {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn readiness_fails_while_the_blob_store_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Every blob-store call after start-up fails, as when the store becomes unreachable.
    let server = TestServer::start(
        tessera(),
        dir.path(),
        &[
            ("Tessera__FaultInjection__FailureRate", "1"),
            ("Tessera__FaultInjection__Seed", "1"),
        ],
    );
    let ready = reqwest::get(server.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let live = reqwest::get(server.url("/health/live")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness does not ask the stores");
    let check = reqwest::get(server.url("/health/check")).await.unwrap();
    assert_eq!(check.status(), 503);
}

/// A TCP relay on a loopback port to `upstream`; dropping it closes the port and every
/// connection through it, as when the network to a store goes down.
struct Relay {
    port: u16,
    tasks: tokio::task::JoinSet<()>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, tasks }
    }

    fn stop(mut self) {
        self.tasks.abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_s3_store_becomes_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) =
        tessera_testkit::ServerBlobs::new(tessera_testkit::Backend::S3, dir.path()).await
    else {
        return;
    };
    let endpoint = std::env::var("AWS_ENDPOINT").expect("the test command sets AWS_ENDPOINT");
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let relay = Relay::start(upstream).await;
    let through_relay = format!("http://127.0.0.1:{}", relay.port);
    let server = TestServer::start(
        tessera(),
        dir.path(),
        &blobs.env_with(&[("AWS_ENDPOINT", &through_relay)]),
    );
    let ready = reqwest::get(server.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 200);

    relay.stop();
    let ready = reqwest::get(server.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 503, "the blob store is unreachable");
    let live = reqwest::get(server.url("/health/live")).await.unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn background_operations_report_their_counts() {
    let dir = tempfile::tempdir().unwrap();
    let blue = std::fs::read(testdata().join("blue-circle.dcm")).unwrap();
    let server = TestServer::start(tessera(), dir.path(), &[]);
    assert_eq!(server.stow("/v1/studies", &[blue]).await.0, 200);
    server.kill();
    // Adoption of the store's own blobs: one instance, already indexed.
    let adopt = tessera_testkit::server::command(tessera(), dir.path(), &["adopt"], &[])
        .output()
        .unwrap();
    assert!(adopt.status.success(), "{adopt:?}");

    let server = TestServer::start(tessera(), dir.path(), &[]);
    let text = scrape(&server).await;
    assert_eq!(
        value(&text, r#"tessera_operation_running{operation="adopt"}"#),
        0.0
    );
    assert_eq!(
        value(&text, r#"tessera_operation_processed{operation="adopt"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tessera_operation_failed{operation="adopt"}"#),
        0.0
    );
    assert!(
        !text.contains(r#"operation="copy""#),
        "an operation that never ran has no series"
    );
}
