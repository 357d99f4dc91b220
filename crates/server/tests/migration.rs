//! The documented migration procedure end to end, against real server processes: Old → Dual
//! with StartCopy (while storing and deleting) → New with StartDelete and cleanup-deleted, with
//! the server killed (SIGKILL) at random moments during copy and delete-old, and a New blob
//! altered before delete-old. It runs once on each blob backend: the filesystem with 300
//! instances, Azurite and S3 with fewer (their calls are slower, and CI's time is bounded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_blob::layout::hash_prefix;
use tessera_core::Watermark;
use tessera_testkit::server::{TestServer, command};
use tessera_testkit::synthetic::Synthetic;
use tessera_testkit::{Backend, Container, ServerBlobs};

const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";
const DELETE_ID: &str = "ce38a27eb1944645b47afe91c38c330f";
const CLEANUP_ID: &str = "d32a04699c274df3a1e812f7f8fecbc8";
const STUDY: &str = "1.2.3.900";
const SERIES: &str = "1.2.3.900.1";

fn sop(i: u32) -> String {
    format!("1.2.3.900.1.{i}")
}

fn instance(i: u32) -> Synthetic {
    let mut synthetic = Synthetic::new(STUDY, SERIES, &sop(i));
    (synthetic.rows, synthetic.columns, synthetic.frames) = (128, 128, 4);
    synthetic.patient_id = format!("P{i}");
    synthetic
}

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

fn env(
    format: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("DicomServer__Services__BlobMigration__FormatType", format),
        // Deleted instances keep their blobs for a day, so cleanup-deleted has work.
        (
            "DicomServer__Services__DeletedInstanceCleanup__DeleteDelay",
            "1.00:00:00",
        ),
        ("Tessera__OperationLease", "00:00:02"),
        ("DicomFunctions__Copy__Batching__Size", "5"),
        ("DicomFunctions__Copy__Batching__MaxParallelCount", "2"),
        ("DicomFunctions__MigrationDeletion__Batching__Size", "5"),
        (
            "DicomFunctions__MigrationDeletion__Batching__MaxParallelCount",
            "2",
        ),
        ("DicomFunctions__BlobMigration__MaxParallelThreads", "2"),
    ];
    env.extend_from_slice(extra);
    env
}

async fn store(server: &TestServer, range: std::ops::RangeInclusive<u32>) {
    let ids: Vec<u32> = range.collect();
    for chunk in ids.chunks(25) {
        let parts: Vec<Vec<u8>> = chunk.iter().map(|&i| instance(i).bytes()).collect();
        let (status, body) = server.stow("/v2/studies", &parts).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn delete(server: &TestServer, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let url = server.url(&format!(
            "/v2/studies/{STUDY}/series/{SERIES}/instances/{}",
            sop(i)
        ));
        assert_eq!(
            reqwest::Client::new()
                .delete(url)
                .send()
                .await
                .unwrap()
                .status(),
            204
        );
    }
}

/// Every live instance comes back byte for byte.
async fn assert_all_retrievable(server: &TestServer, live: &BTreeSet<u32>) {
    for &i in live {
        let url = server.url(&format!(
            "/v1/studies/{STUDY}/series/{SERIES}/instances/{}",
            sop(i)
        ));
        let response = reqwest::Client::new()
            .get(url)
            .header("Accept", "application/dicom")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "instance {i}");
        assert!(
            response.bytes().await.unwrap() == instance(i).bytes().as_slice(),
            "instance {i} differs"
        );
    }
}

async fn operation(server: &TestServer, id: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(&format!("/v2/operations/{id}")))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Old-name watermarks by instance number, from the Old file names.
async fn old_watermarks(blobs: &ServerBlobs) -> BTreeMap<u32, u64> {
    blobs
        .names(Container::Files)
        .await
        .iter()
        .filter_map(|name| {
            let (_, rest) = name.rsplit_once(&format!("{}.", SERIES))?;
            let (i, w) = rest.strip_suffix(".dcm")?.split_once('_')?;
            Some((i.parse().ok()?, w.parse().ok()?))
        })
        .collect()
}

fn new_name(watermark: u64) -> String {
    format!(
        "{}_{watermark}.dcm",
        hash_prefix(Watermark::new(watermark).unwrap())
    )
}

/// A cheap, seeded pseudo-random delay (the seed is printed so a failure can be replayed).
struct Jitter(u64);

impl Jitter {
    fn next_ms(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

/// The logs of the servers one run of the test killed.
type KilledLogs = Mutex<Vec<Arc<Mutex<Vec<String>>>>>;

/// Whether `server` or a server killed before it logged a line for which `matches` holds.
fn logged(killed_logs: &KilledLogs, server: &TestServer, matches: impl Fn(&str) -> bool) -> bool {
    let mut logs = killed_logs.lock().map(|l| l.clone()).unwrap_or_default();
    logs.push(server.log.clone());
    logs.iter().any(|log| {
        log.lock()
            .is_ok_and(|lines| lines.iter().any(|l| matches(l)))
    })
}

/// Runs servers with `env` until operation `id` ends, killing the server `kills` times at
/// random moments while the operation runs. Returns the last server and the final state.
async fn run_with_kills(
    dir: &Path,
    env: &[(&str, &str)],
    id: &str,
    kills: u32,
    jitter: &mut Jitter,
    killed_logs: &KilledLogs,
) -> (TestServer, Value, u32) {
    let mut server = TestServer::start(tessera(), dir, env);
    let mut killed = 0;
    let mut saw_running = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "operation {id} did not finish");
        let (status, body) = operation(&server, id).await;
        if status == 202 {
            saw_running = true;
            let processed = body["results"]["processed"].as_u64().unwrap_or(0);
            if killed < kills && processed > 0 {
                tokio::time::sleep(Duration::from_millis(jitter.next_ms(0, 150))).await;
                // The operation may finish in the moment before the kill, so what it logged is
                // looked for in every server it ran in.
                if let Ok(mut logs) = killed_logs.lock() {
                    logs.push(server.log.clone());
                }
                server.kill();
                killed += 1;
                server = TestServer::start(tessera(), dir, env);
                continue;
            }
        }
        if status == 200 && matches!(body["status"].as_str(), Some("succeeded" | "failed")) {
            assert!(saw_running || killed == 0, "running was never observed");
            return (server, body, killed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_counts_add_up(body: &Value) {
    let r = &body["results"];
    let get = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(get("failed"), 0, "{body}");
    assert_eq!(get("verified"), get("processed") - get("skipped"), "{body}");
    assert_eq!(body["percentComplete"], 100, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem() {
    old_to_new_with_kills_alterations_and_concurrent_traffic(Backend::FileSystem, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite() {
    old_to_new_with_kills_alterations_and_concurrent_traffic(Backend::Azurite, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    old_to_new_with_kills_alterations_and_concurrent_traffic(Backend::S3, 100).await;
}

/// The procedure on `backend`, with `count` instances stored in Old.
async fn old_to_new_with_kills_alterations_and_concurrent_traffic(backend: Backend, count: u32) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("{backend:?}: jitter seed {seed}");
    let mut jitter = Jitter(seed);
    let killed_logs = KilledLogs::default();
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let env = |format: &'static str, extra: &[(&'static str, &'static str)]| {
        let mut all = blobs.env();
        all.extend(env(format, extra));
        all
    };
    let mut live: BTreeSet<u32> = (1..=count).collect();

    // 1. Old: only UID names.
    let server = TestServer::start(tessera(), dir.path(), &env("Old", &[]));
    store(&server, 1..=count).await;
    delete(&server, 1..=10).await;
    live.retain(|i| *i > 10);
    assert!(
        blobs
            .names(Container::Files)
            .await
            .iter()
            .all(|n| n.contains('/')),
        "Old writes UID names only"
    );
    assert_all_retrievable(&server, &live).await;
    server.kill();

    // 2. Dual + StartCopy, with stores and deletes while the copy runs, and kills.
    let copy_env = env(
        "Dual",
        &[("DicomServer__Services__BlobMigration__StartCopy", "true")],
    );
    // Stores and deletes in Dual first; the copy then starts with the kills below (a copy that
    // finished in this server would leave nothing to kill).
    let server = TestServer::start(tessera(), dir.path(), &env("Dual", &[]));
    store(&server, count + 1..=count + 30).await;
    delete(&server, 11..=20).await;
    // The copy may already finish in this server.
    if let Ok(mut logs) = killed_logs.lock() {
        logs.push(server.log.clone());
    }
    server.kill();
    live.extend(count + 1..=count + 30);
    live.retain(|i| *i > 20);
    let (server, copy, copy_kills) =
        run_with_kills(dir.path(), &copy_env, COPY_ID, 3, &mut jitter, &killed_logs).await;
    assert_eq!(copy["status"], "succeeded", "{copy}");
    assert_eq!(copy["type"], "copy");
    assert_counts_add_up(&copy);
    let r = &copy["results"];
    assert_eq!(
        r["copied"].as_u64().unwrap() + r["alreadyPresent"].as_u64().unwrap(),
        2 * r["processed"].as_u64().unwrap()
    );
    tessera_testkit::server::eventually_within(
        "the log says the copy completed",
        Duration::from_secs(90),
        || {
            logged(&killed_logs, &server, |l| {
                l.contains("Completed copying files.")
            })
        },
    )
    .await;
    let watermarks = old_watermarks(&blobs).await;
    let names: BTreeSet<String> = blobs.names(Container::Files).await.into_iter().collect();
    let metadata_names: BTreeSet<String> =
        blobs.names(Container::Metadata).await.into_iter().collect();
    for i in &live {
        let w = watermarks[i];
        assert!(names.contains(&new_name(w)), "instance {i} has no New file");
        let stored = blobs.read(Container::Files, &new_name(w)).await;
        assert!(
            stored == instance(*i).bytes(),
            "New file of instance {i} differs"
        );
        assert!(metadata_names.contains(&format!(
            "{}_{w}_metadata.json",
            hash_prefix(Watermark::new(w).unwrap())
        )));
    }
    assert_all_retrievable(&server, &live).await;
    server.kill();

    // 3. An altered New blob before delete-old: caught, its Old blob survives, reported.
    let victim = *live.iter().nth(7).unwrap();
    let victim_new = new_name(watermarks[&victim]);
    let good = blobs.read(Container::Files, &victim_new).await;
    blobs
        .replace(Container::Files, &victim_new, good.slice(..good.len() / 2))
        .await;
    let delete_env = env(
        "New",
        &[
            ("DicomServer__Services__BlobMigration__StartDelete", "true"),
            (
                "DicomServer__Services__BlobMigration__CleanupFilterTimeStamp",
                "2000-01-01",
            ),
        ],
    );
    let (server, deletion, delete_kills) = run_with_kills(
        dir.path(),
        &delete_env,
        DELETE_ID,
        3,
        &mut jitter,
        &killed_logs,
    )
    .await;
    assert!(
        copy_kills + delete_kills >= 5,
        "only {} kills happened",
        copy_kills + delete_kills
    );
    assert_eq!(deletion["status"], "failed", "{deletion}");
    assert_eq!(deletion["type"], "migrationDeletion");
    let errors = deletion["results"]["errors"].to_string();
    assert!(
        errors.contains(&format!("watermark {}", watermarks[&victim])),
        "{errors}"
    );
    let old_victim = blobs
        .names(Container::Files)
        .await
        .into_iter()
        .find(|n| n.contains(&format!("{}_{}.dcm", sop(victim), watermarks[&victim])));
    assert!(
        old_victim.is_some(),
        "the Old file of the altered instance survives"
    );
    assert_all_retrievable(
        &server,
        &live.iter().copied().filter(|i| *i != victim).collect(),
    )
    .await;
    server.kill();

    // 4. Repaired, a restart retries only that instance; delete-old and cleanup-deleted finish.
    blobs.replace(Container::Files, &victim_new, good).await;
    let server = TestServer::start(tessera(), dir.path(), &delete_env);
    tessera_testkit::server::eventually_within(
        "the log says delete-old completed",
        Duration::from_secs(90),
        || {
            logged(&killed_logs, &server, |l| {
                l.contains("Completed deleting files.") && !l.contains("cleanupDeleted")
            })
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while operation(&server, CLEANUP_ID).await.1["status"] != "succeeded" {
        assert!(Instant::now() < deadline, "cleanup-deleted did not succeed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, deletion) = operation(&server, DELETE_ID).await;
    assert_eq!(
        (status, deletion["status"].as_str()),
        (200, Some("succeeded")),
        "{deletion}"
    );
    assert_eq!(deletion["results"]["failed"], 0, "{deletion}");
    let (_, cleanup) = operation(&server, CLEANUP_ID).await;
    assert_eq!(cleanup["status"], "succeeded", "{cleanup}");
    assert_eq!(cleanup["type"], "cleanupDeleted");

    let remaining_old: Vec<String> = blobs
        .all_names()
        .await
        .into_iter()
        .filter(|n| n.contains('/'))
        .collect();
    assert!(
        remaining_old.is_empty(),
        "Old names left: {remaining_old:?}"
    );
    let names: BTreeSet<String> = blobs.names(Container::Files).await.into_iter().collect();
    for i in &live {
        assert!(
            names.contains(&new_name(watermarks[i])),
            "instance {i} lost its New file"
        );
    }
    assert_all_retrievable(&server, &live).await;

    let v1: Value = reqwest::get(server.url("/v1/operations/1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["status"], "completed", "v1 says completed: {v1}");
    assert_eq!(v1["operationId"], COPY_ID);
    let unknown = reqwest::get(server.url("/v2/operations/00000000000000000000000000000000"))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let malformed = reqwest::get(server.url("/v2/operations/not-a-guid"))
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);

    let output = command(tessera(), dir.path(), &["migrate", "status"], &delete_env)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for kind in ["copy", "migrationDeletion", "cleanupDeleted"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_default();
        assert!(
            line.contains("succeeded") && line.contains("100%"),
            "{text}"
        );
    }
}
