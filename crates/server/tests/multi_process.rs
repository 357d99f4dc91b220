//! Two `tessera serve` processes on one PostgreSQL index and one Azurite container pair, as
//! "Running at scale" in the README describes:
//! 1. stores through both, some at the same time: a search through either sees everything, and
//!    no two instances share a watermark;
//! 2. deleting a study through one: both run the deleted-instance cleanup, and every queued
//!    removal is done exactly once (the removal counters of both processes add up to the rows);
//! 3. the migration copy (Dual with StartCopy in both): one process runs it, the other is
//!    refused; when the holder is killed (SIGKILL), the other takes over when the lease expires
//!    and finishes it, each instance processed once;
//! 4. a process killed mid-upload: the survivor and the restarted process free its reservation
//!    and remove its blobs (no `Creating` row, no blob without a `Created` row), and the
//!    instance can be stored again.
//!
//! Skipped (failing under `TESSERA_TEST_REQUIRE_SERVICES=1`) without PostgreSQL or Azurite.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tessera_blob::layout::{ParsedName, STAGING_PREFIX, parse_name};
use tessera_index::{ChangeAction, InstanceIndex};
use tessera_testkit::server::{TestServer, dicom_multipart, eventually_within};
use tessera_testkit::synthetic::Synthetic;
use tessera_testkit::{Backend, Container, IndexEngine, ServerBlobs, eventually_async};

const KEPT_STUDY: &str = "1.2.3.950";
const DELETED_STUDY: &str = "1.2.3.951";
const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";
/// Instances of the kept study, stored half through each process.
const KEPT: u32 = 40;
/// Instances of the study deleted through one process.
const DELETED: u32 = 10;
/// Copy batching: small batches, so the copy has many checkpoints to be killed between.
const COPY_BATCH: u64 = 2;
const COPY_PARALLEL: u64 = 1;
/// Bound of every wait on background work (a loaded 2-core machine).
const LIMIT: Duration = Duration::from_secs(60);

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

fn instance(study: &str, i: u32) -> Synthetic {
    let mut synthetic = Synthetic::new(study, &format!("{study}.1"), &format!("{study}.1.{i}"));
    (synthetic.rows, synthetic.columns, synthetic.frames) = (64, 64, 2);
    synthetic.patient_id = format!("MP{i}");
    synthetic
}

/// The instance uploaded slowly and killed mid-body: large enough to be read in several chunks.
fn large() -> Synthetic {
    let mut synthetic = Synthetic::new("1.2.3.952", "1.2.3.952.1", "1.2.3.952.1.1");
    (synthetic.rows, synthetic.columns, synthetic.frames) = (512, 512, 8);
    synthetic
}

/// STOW-RS of one instance to `base`; the status.
async fn stow(client: &reqwest::Client, base: &str, bytes: Vec<u8>) -> u16 {
    let (body, content_type) = dicom_multipart("multi-process", &[bytes]);
    client
        .post(format!("{base}/v2/studies"))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .await
        .expect("STOW request")
        .status()
        .as_u16()
}

/// The SOP instance UIDs a QIDO search at `path` returns.
async fn search(server: &TestServer, path: &str) -> BTreeSet<String> {
    let response = reqwest::get(server.url(path)).await.expect("QIDO request");
    if response.status() == 204 {
        return BTreeSet::new();
    }
    assert_eq!(response.status(), 200, "{path}");
    let body: Value = response.json().await.expect("QIDO JSON");
    body.as_array()
        .expect("a QIDO array")
        .iter()
        .filter_map(|d| d["00080018"]["Value"][0].as_str().map(str::to_owned))
        .collect()
}

/// The sum of the samples of counter `name` whose labels contain `labels`, in `/metrics`.
async fn counter(server: &TestServer, name: &str, labels: &str) -> u64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn removals(servers: &[&TestServer], outcome: &str) -> u64 {
    let mut total = 0;
    for server in servers {
        total += counter(
            server,
            "tessera_deleted_instance_cleanup_total",
            &format!("outcome=\"{outcome}\""),
        )
        .await;
    }
    total
}

async fn operation(server: &TestServer, id: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(&format!("/v2/operations/{id}")))
        .await
        .expect("operation request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn logged(server: &TestServer, text: &str) -> bool {
    server
        .log
        .lock()
        .is_ok_and(|lines| lines.iter().any(|l| l.contains(text)))
}

fn runs_copy(server: &TestServer) -> bool {
    server.log.lock().is_ok_and(|lines| {
        lines
            .iter()
            .any(|l| l.contains("running operation") && l.contains("copy"))
    })
}

/// Rows still `Creating` (reservations of stores in progress, or of dead processes), read
/// straight from the database: the index's own query leaves out those of live processes.
async fn creating(database: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE status = 0")
        .fetch_one(database)
        .await
        .expect("counting Creating rows")
}

/// Blobs that no `Created` row accounts for (unparsable names, staging blobs, and blobs whose
/// watermark has no `Created` row).
async fn orphans(blobs: &ServerBlobs, index: &InstanceIndex) -> Vec<String> {
    let mut orphans = Vec::new();
    for name in blobs.all_names().await {
        let watermark = match parse_name(&name) {
            _ if name.starts_with(STAGING_PREFIX) => None,
            Some(ParsedName::Old { instance, .. }) => Some(instance.watermark()),
            Some(ParsedName::New { watermark, .. }) => Some(watermark),
            None => None,
        };
        let referenced = match watermark {
            Some(w) => index.is_referenced(w).await.expect("is_referenced"),
            None => false,
        };
        if !referenced {
            orphans.push(name);
        }
    }
    orphans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_postgres_index_and_one_azurite_container() {
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = IndexEngine::Postgres.fresh_database().await else {
        return;
    };
    let Some(blobs) = ServerBlobs::new(Backend::Azurite, dir.path()).await else {
        return;
    };
    let index = InstanceIndex::open(&database.url).await.unwrap();
    let database_pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let copy_batch = COPY_BATCH.to_string();
    let copy_parallel = COPY_PARALLEL.to_string();
    let env = |format: &'static str, copy: bool| {
        let mut env = blobs.env_with(&[
            ("Tessera__Index", database.url.as_str()),
            ("DicomServer__Services__BlobMigration__FormatType", format),
            ("Tessera__ProcessLease", "00:00:02"),
            ("Tessera__OperationLease", "00:00:02"),
            ("Tessera__StaleStoreTimeout", "00:00:03"),
            ("Tessera__SweepInterval", "00:00:01"),
            (
                "DicomServer__Services__DeletedInstanceCleanup__DeleteDelay",
                "00:00:00",
            ),
            (
                "DicomServer__Services__DeletedInstanceCleanup__PollingInterval",
                "00:00:01",
            ),
            (
                "DicomServer__Services__DeletedInstanceCleanup__BatchSize",
                "2",
            ),
            ("DicomFunctions__Copy__Batching__Size", copy_batch.as_str()),
            (
                "DicomFunctions__Copy__Batching__MaxParallelCount",
                copy_parallel.as_str(),
            ),
            ("DicomFunctions__BlobMigration__MaxParallelThreads", "1"),
        ]);
        if copy {
            env.push(("DicomServer__Services__BlobMigration__StartCopy", "true"));
        }
        env
    };

    // 1. Stores through both, four at a time on each.
    let a = TestServer::start(tessera(), dir.path(), &env("Old", false));
    let b = TestServer::start(tessera(), dir.path(), &env("Old", false));
    let client = reqwest::Client::new();
    let mut uploads = Vec::new();
    for lane in 0..8u32 {
        let base = if lane % 2 == 0 { a.url("") } else { b.url("") };
        let client = client.clone();
        uploads.push(tokio::spawn(async move {
            let mut i = lane + 1;
            while i <= KEPT + DELETED {
                let bytes = if i <= KEPT {
                    instance(KEPT_STUDY, i).bytes()
                } else {
                    instance(DELETED_STUDY, i).bytes()
                };
                assert_eq!(stow(&client, &base, bytes).await, 200, "instance {i}");
                i += 8;
            }
        }));
    }
    for upload in futures::future::join_all(uploads).await {
        upload.unwrap();
    }
    let kept: BTreeSet<String> = (1..=KEPT).map(|i| format!("{KEPT_STUDY}.1.{i}")).collect();
    for server in [&a, &b] {
        let found = search(server, &format!("/v2/studies/{KEPT_STUDY}/instances")).await;
        assert_eq!(found, kept, "a search through {}", server.address);
        let found = search(server, &format!("/v2/studies/{DELETED_STUDY}/instances")).await;
        assert_eq!(found.len(), DELETED as usize);
    }
    let feed = index.change_feed_by_sequence(0, 1000).await.unwrap();
    let created: Vec<u64> = feed
        .iter()
        .filter(|e| e.action == ChangeAction::Create)
        .map(|e| e.instance.watermark().get())
        .collect();
    assert_eq!(created.len(), (KEPT + DELETED) as usize, "{feed:?}");
    let unique: BTreeSet<u64> = created.iter().copied().collect();
    assert_eq!(
        unique.len(),
        created.len(),
        "watermarks are unique: {feed:?}"
    );

    // 2. A study deleted through `a`: both clean up, each row once.
    let deleted = client
        .delete(a.url(&format!("/v2/studies/{DELETED_STUDY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    eventually_async(
        "the cleanup removed every deleted instance",
        LIMIT,
        async || {
            removals(&[&a, &b], "removed").await >= u64::from(DELETED)
                && !blobs
                    .all_names()
                    .await
                    .iter()
                    .any(|n| n.contains(DELETED_STUDY))
        },
    )
    .await;
    // Two more polling rounds on each, for a row handled twice to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        removals(&[&a, &b], "removed").await,
        u64::from(DELETED),
        "every queued removal is done exactly once"
    );
    assert_eq!(removals(&[&a, &b], "failed").await, 0);
    assert!(orphans(&blobs, &index).await.is_empty());
    for server in [&a, &b] {
        assert!(
            search(server, &format!("/v2/studies/{DELETED_STUDY}/instances"))
                .await
                .is_empty()
        );
    }
    assert!(a.terminate(Duration::from_secs(30)).is_some());
    assert!(b.terminate(Duration::from_secs(30)).is_some());

    // 3. The copy, configured in both: one runs it; killed, the other finishes it.
    let a = TestServer::start(tessera(), dir.path(), &env("Dual", true));
    let b = TestServer::start(tessera(), dir.path(), &env("Dual", true));
    let mut processed_at_kill = 0;
    eventually_within("one process runs the copy", LIMIT, || {
        runs_copy(&a) || runs_copy(&b)
    })
    .await;
    let (holder, other) = if runs_copy(&a) { (a, b) } else { (b, a) };
    eventually_async("the copy made progress", LIMIT, async || {
        let (status, body) = operation(&other, COPY_ID).await;
        assert_eq!(status, 202, "the copy ended before the kill: {body}");
        processed_at_kill = body["results"]["processed"].as_u64().unwrap_or(0);
        processed_at_kill > 0
    })
    .await;
    assert!(
        !runs_copy(&other),
        "both processes ran the copy while its holder lived"
    );
    holder.kill();
    eventually_async("the other process finished the copy", LIMIT, async || {
        operation(&other, COPY_ID).await.1["status"] == "succeeded"
    })
    .await;
    assert!(runs_copy(&other), "the copy was taken over");
    assert!(
        logged(&other, "operation is running in another process"),
        "the other process was refused the copy while its holder lived"
    );
    let (_, copy) = operation(&other, COPY_ID).await;
    let results = &copy["results"];
    let get = |k: &str| results[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(get("failed"), 0, "{copy}");
    assert_eq!(get("processed"), u64::from(KEPT), "{copy}");
    assert_eq!(get("verified"), u64::from(KEPT), "{copy}");
    assert_eq!(get("copied") + get("alreadyPresent"), 2 * get("processed"));
    // Only the round in progress at the kill is redone (its blobs are then already present).
    assert!(
        get("alreadyPresent") <= 2 * COPY_BATCH * COPY_PARALLEL,
        "more than the interrupted round was copied again: {copy} (processed {processed_at_kill} at the kill)"
    );

    // 4. A process killed mid-upload: its reservation is freed and its blobs removed.
    let a = TestServer::start(tessera(), dir.path(), &env("Dual", false));
    let b = other;
    let (body, content_type) = dicom_multipart("stall", &[large().bytes()]);
    let half = Bytes::copy_from_slice(&body[..body.len() / 2]);
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(half) }).chain(
        futures::stream::once(async {
            std::future::pending::<()>().await;
            Ok(Bytes::new())
        }),
    );
    let url = a.url("/v2/studies");
    let stalled = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("Content-Type", content_type)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    eventually_async("the upload reserved its instance", LIMIT, async || {
        creating(&database_pool).await == 1
    })
    .await;
    a.kill();
    let _ = stalled.await;
    assert_eq!(
        creating(&database_pool).await,
        1,
        "the reservation outlives its process"
    );
    let a = TestServer::start(tessera(), dir.path(), &env("Dual", false));
    eventually_async(
        "the dead process's reservation is freed and its blobs removed",
        LIMIT,
        async || creating(&database_pool).await == 0 && orphans(&blobs, &index).await.is_empty(),
    )
    .await;
    assert_eq!(
        stow(&client, &b.url(""), large().bytes()).await,
        200,
        "stored again through the survivor"
    );
    let retrieved = client
        .get(a.url("/v2/studies/1.2.3.952/series/1.2.3.952.1/instances/1.2.3.952.1.1"))
        .header("Accept", "application/dicom")
        .send()
        .await
        .unwrap();
    assert_eq!(retrieved.status(), 200);
    assert!(retrieved.bytes().await.unwrap() == large().bytes().as_slice());
    for server in [&a, &b] {
        assert_eq!(
            search(server, "/v2/instances?limit=200").await.len(),
            KEPT as usize + 1
        );
    }
    let files = blobs.names(Container::Files).await;
    assert!(
        files.iter().all(|n| !n.starts_with(STAGING_PREFIX)),
        "{files:?}"
    );
    assert!(orphans(&blobs, &index).await.is_empty());
    drop((a, b));
    database_pool.close().await;
    drop(index);
}
