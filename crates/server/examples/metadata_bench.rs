//! Benchmark (not a test): series-metadata latency for a series of INSTANCES instances, against a
//! real server process on an embedded store. Prints p50/p95 with and without gzip.
//! `bash bench/metadata.sh [INSTANCES]` builds it in release mode and runs it.

use std::time::{Duration, Instant};

use tessera_testkit::server::TestServer;
use tessera_testkit::synthetic::Synthetic;

const STUDY: &str = "1.2.826.0.1.3680043.10.77";
const SERIES: &str = "1.2.826.0.1.3680043.10.77.1";
const SAMPLES: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .expect("usage: metadata_bench TESSERA_BINARY [INSTANCES]");
    let instances: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temporary directory");
    // The server runs in the temporary directory, so the binary's path must not be relative.
    let binary = std::fs::canonicalize(&binary).expect("the tessera binary exists");
    let server = TestServer::start(&binary, dir.path(), &[]);
    let started = Instant::now();
    for batch in (0..instances).collect::<Vec<_>>().chunks(100) {
        let parts: Vec<Vec<u8>> = batch
            .iter()
            .map(|i| {
                let mut instance = Synthetic::new(STUDY, SERIES, &format!("{SERIES}.{}", i + 1));
                instance.rows = 16;
                instance.columns = 16;
                instance.bytes()
            })
            .collect();
        let (status, _) = server.stow("/v2/studies", &parts).await;
        assert_eq!(status, 200, "STOW failed");
    }
    println!(
        "stored {instances} instances in one series in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let client = reqwest::Client::new();
    let url = server.url(&format!("/v2/studies/{STUDY}/series/{SERIES}/metadata"));
    for encoding in ["identity", "gzip"] {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        for _ in 0..SAMPLES {
            let start = Instant::now();
            let response = client
                .get(&url)
                .header("Accept", "application/dicom+json")
                .header("Accept-Encoding", encoding)
                .send()
                .await
                .expect("metadata request");
            assert_eq!(response.status().as_u16(), 200);
            bytes = response.bytes().await.expect("metadata body").len();
            times.push(start.elapsed());
        }
        times.sort();
        println!(
            "series metadata, {instances} instances, Accept-Encoding {encoding}: p50 {:.1} ms, p95 {:.1} ms ({bytes} bytes on the wire)",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.95).as_secs_f64() * 1000.0,
        );
    }
}
