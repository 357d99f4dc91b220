//! Graceful shutdown of a real server: SIGTERM during uploads (acknowledged ones are stored,
//! one still arriving within the grace period finishes, a stalled one is failed and leaves
//! nothing, and its SOP instance can be stored again at once) and during a copy (exit 0, the
//! lease is released, a restarted server resumes the copy within seconds although the lease is
//! 10 minutes long).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tessera_testkit::server::{TestServer, dicom_multipart, files_under};
use tessera_testkit::synthetic::Synthetic;

const STUDY: &str = "1.2.3.700";
const SERIES: &str = "1.2.3.700.1";
const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

fn instance(i: u32, frames: u32) -> Synthetic {
    let mut synthetic = Synthetic::new(STUDY, SERIES, &format!("{SERIES}.{i}"));
    (synthetic.rows, synthetic.columns, synthetic.frames) = (256, 256, frames);
    synthetic
}

/// STOW of one instance whose body arrives in `chunks` pieces, `pause` apart, and then (if
/// `stall`) never ends. The status, or 0 when the request failed without one.
async fn slow_stow(
    server_url: String,
    bytes: Vec<u8>,
    chunks: usize,
    pause: Duration,
    stall: bool,
) -> u16 {
    let (body, content_type) = dicom_multipart("slow-boundary", &[bytes]);
    let size = body.len().div_ceil(chunks);
    let pieces: Vec<Bytes> = body.chunks(size).map(Bytes::copy_from_slice).collect();
    let sent = if stall {
        pieces.len() / 2
    } else {
        pieces.len()
    };
    let stream = futures::stream::iter(pieces.into_iter().take(sent))
        .then(move |piece| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(piece)
        })
        .chain(
            futures::stream::once(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Ok(Bytes::new())
            })
            .filter(|piece: &Result<Bytes, std::io::Error>| {
                futures::future::ready(piece.as_ref().is_ok_and(|p| !p.is_empty()))
            }),
        );
    let response = reqwest::Client::new()
        .post(format!("{server_url}/v2/studies"))
        .header("Content-Type", content_type)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    response.map(|r| r.status().as_u16()).unwrap_or(0)
}

async fn get_instance(server: &TestServer, i: u32) -> (u16, Bytes) {
    let response = reqwest::Client::new()
        .get(server.url(&format!(
            "/v2/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.{i}"
        )))
        .header("Accept", "application/dicom")
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.bytes().await.unwrap())
}

/// The SOP instances QIDO finds in the study.
async fn stored(server: &TestServer) -> BTreeSet<String> {
    let found = server
        .get_json(&format!("/v2/studies/{STUDY}/instances?limit=200"))
        .await;
    found
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["00080018"]["Value"][0].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("Tessera__ShutdownTimeout", "00:00:03"),
        (
            "DicomServer__Services__DeletedInstanceCleanup__PollingInterval",
            "00:00:01",
        ),
    ];
    let server = TestServer::start(tessera(), dir.path(), &env);
    let mut acknowledged = BTreeSet::new();
    for i in 1..=3 {
        let (status, body) = server.stow("/v2/studies", &[instance(i, 2).bytes()]).await;
        assert_eq!(status, 200, "{body}");
        acknowledged.insert(i);
    }
    // 100: arrives over ~1.5 s, within the grace period; 101: half of it, then nothing.
    let finishing = tokio::spawn(slow_stow(
        server.url(""),
        instance(100, 16).bytes(),
        10,
        Duration::from_millis(150),
        false,
    ));
    let stalled = tokio::spawn(slow_stow(
        server.url(""),
        instance(101, 32).bytes(),
        8,
        Duration::from_millis(20),
        true,
    ));
    // Quick stores one after another until the server stops taking them.
    let quick_url = server.url("");
    let quick = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut acknowledged = Vec::new();
        for i in 200..360 {
            let (body, content_type) = dicom_multipart("b", &[instance(i, 1).bytes()]);
            let response = client
                .post(format!("{quick_url}/v2/studies"))
                .header("Content-Type", content_type)
                .body(body)
                .send()
                .await;
            match response {
                Ok(r) if r.status() == 200 => acknowledged.push(i),
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the server exits after SIGTERM");
    let took = started.elapsed();
    println!("exit {status:?} after {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(12),
        "the stalled upload held the shutdown for the grace period only ({took:?})"
    );
    assert_eq!(
        finishing.await.unwrap(),
        200,
        "an upload within the grace period finishes"
    );
    assert_ne!(stalled.await.unwrap(), 200);
    let quick = quick.await.unwrap();
    assert!(!quick.is_empty(), "some quick stores were acknowledged");
    acknowledged.extend(quick);
    acknowledged.insert(100);

    let server = TestServer::start(tessera(), dir.path(), &env);
    let expected: BTreeSet<String> = acknowledged
        .iter()
        .map(|i| format!("{SERIES}.{i}"))
        .collect();
    assert_eq!(
        stored(&server).await,
        expected,
        "exactly the acknowledged stores exist"
    );
    for &i in &acknowledged {
        let frames = match i {
            100 => 16,
            1..=3 => 2,
            _ => 1,
        };
        let (status, bytes) = get_instance(&server, i).await;
        assert_eq!(status, 200, "instance {i}");
        assert!(
            bytes == instance(i, frames).bytes().as_slice(),
            "instance {i} differs"
        );
    }
    assert_eq!(get_instance(&server, 101).await.0, 404);
    // The stalled SOP instance is free at once.
    let (status, body) = server
        .stow("/v2/studies", &[instance(101, 32).bytes()])
        .await;
    assert_eq!(status, 200, "{body}");
    // Its first attempt left nothing once the cleanup ran: one file per instance, no staging.
    let files = dir.path().join("data/blobs/dicomwebcontainer");
    let want = acknowledged.len() + 1;
    for _ in 0..100 {
        if files_under(&files).len() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(files_under(&files).len(), want, "{:?}", files_under(&files));
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("exits");
    assert!(status.success());
}

fn copy_env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("DicomServer__Services__BlobMigration__FormatType", "Dual"),
        ("DicomServer__Services__BlobMigration__StartCopy", "true"),
        ("Tessera__OperationLease", "00:10:00"),
        ("DicomFunctions__Copy__Batching__Size", "4"),
        ("DicomFunctions__Copy__Batching__MaxParallelCount", "1"),
        ("DicomFunctions__BlobMigration__MaxParallelThreads", "1"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn copy_state(server: &TestServer) -> (u16, Value) {
    let response = reqwest::get(server.url(&format!("/v2/operations/{COPY_ID}")))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_copy_releases_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let old = [("DicomServer__Services__BlobMigration__FormatType", "Old")];
    let server = TestServer::start(tessera(), dir.path(), &old);
    let count = 400;
    let ids: Vec<u32> = (1..=count).collect();
    for chunk in ids.chunks(50) {
        let parts: Vec<Vec<u8>> = chunk.iter().map(|&i| instance(i, 1).bytes()).collect();
        let (status, body) = server.stow("/v2/studies", &parts).await;
        assert_eq!(status, 200, "{body}");
    }
    server.kill();

    let env = copy_env(&[]);
    let server = TestServer::start(tessera(), dir.path(), &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    let processed_before = loop {
        assert!(Instant::now() < deadline, "the copy was never seen running");
        let (status, body) = copy_state(&server).await;
        let processed = body["results"]["processed"].as_u64().unwrap_or(0);
        assert_ne!(
            body["status"], "succeeded",
            "the copy finished before SIGTERM; make it longer"
        );
        if status == 202 && processed > 0 {
            break processed;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the server exits after SIGTERM");
    println!(
        "exit {status:?} after {:?}, {processed_before} processed",
        started.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let index = tessera_index::InstanceIndex::open(&format!(
        "sqlite://{}/data/index.db",
        dir.path().display()
    ))
    .await
    .unwrap();
    let record = index
        .operation(COPY_ID)
        .await
        .unwrap()
        .expect("the copy exists");
    assert_eq!(record.lease_owner, None, "the lease was released");
    assert!(
        index.processes().await.unwrap().is_empty(),
        "the process unregistered"
    );
    drop(index);

    let server = TestServer::start(tessera(), dir.path(), &env);
    let restarted = Instant::now();
    let mut resumed = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        assert!(Instant::now() < deadline, "the copy did not finish");
        let (_, body) = copy_state(&server).await;
        let processed = body["results"]["processed"].as_u64().unwrap_or(0);
        if resumed.is_none() && (processed > processed_before || body["status"] == "succeeded") {
            resumed = Some(restarted.elapsed());
        }
        if body["status"] == "succeeded" {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let resumed = resumed.unwrap();
    println!("resumed after {resumed:?}: {body}");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed at once, not after the lease"
    );
    let r = &body["results"];
    assert_eq!(r["failed"], 0, "{body}");
    assert_eq!(r["verified"], r["processed"], "{body}");
    for i in [1, count / 2, count] {
        let (status, bytes) = get_instance(&server, i).await;
        assert_eq!(status, 200);
        assert!(bytes == instance(i, 1).bytes().as_slice());
    }
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("exits");
    assert!(status.success());
}
