//! The kill loop: a real server is killed (SIGKILL) at random moments, at least 20 times,
//! during a mixed stream of stores (small and multi-megabyte), deletes and retrieves, and during
//! a migration (FormatType Dual with StartCopy, then New with StartDelete). While it is dead,
//! every blob still has an index row; after every restart, the stores it was killed in can be
//! stored again at once, every acknowledged instance reads back byte for byte, and every
//! `Created` row has its blobs. At the end, once the cleanup and the sweeper ran, no blob is
//! left without a `Created` row.
//!
//! The seed is printed; `KILL_LOOP_SEED=N` replays one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tessera_blob::BlobLayout;
use tessera_blob::layout::{ParsedName, STAGING_PREFIX, frame_ranges, parse_name};
use tessera_core::{Uid, VersionedInstance, Watermark};
use tessera_index::{InstanceIndex, RetrieveScope};
use tessera_testkit::server::{TestServer, dicom_multipart, files_under};
use tessera_testkit::synthetic::Synthetic;

const STUDY: &str = "1.2.3.800";
const SERIES: &str = "1.2.3.800.1";
const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";
const DELETE_ID: &str = "ce38a27eb1944645b47afe91c38c330f";
const MIN_KILLS: u32 = 20;
/// Instances stored under Old names before the first kill, for the copy to work on.
const SEEDED: u32 = 150;
/// Kills while the copy, then delete-old, is seen running.
const OPERATION_KILLS: u32 = 3;
/// The loop gives up (and fails) past this.
const BUDGET: Duration = Duration::from_secs(170);

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

/// Three shapes: small (8 KiB), large (2 MiB) and, rarely, one over the single-put limit
/// (10 MiB, so it goes through a staging blob).
fn shape(i: u32) -> (u16, u16, u32) {
    match i {
        _ if i.is_multiple_of(53) => (1024, 1024, 10),
        _ if i.is_multiple_of(11) => (1024, 1024, 2),
        _ => (64, 64, 2),
    }
}

fn synthetic(i: u32) -> Synthetic {
    let mut s = Synthetic::new(STUDY, SERIES, &format!("{SERIES}.{i}"));
    (s.rows, s.columns, s.frames) = shape(i);
    s.patient_id = format!("K{i}");
    s
}

/// The pixel data of a shape, computed once (the pattern does not depend on the instance).
fn pixels(i: u32) -> &'static [u8] {
    type Cache = Mutex<Vec<((u16, u16, u32), &'static [u8])>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    let key = shape(i);
    if let Some((_, p)) = cache.iter().find(|(k, _)| *k == key) {
        return p;
    }
    let s = synthetic(i);
    let p: &'static [u8] = Vec::leak((0..s.pixel_length()).map(Synthetic::pixel).collect());
    cache.push((key, p));
    p
}

fn bytes(i: u32) -> Vec<u8> {
    let mut out = synthetic(i).header();
    out.extend_from_slice(pixels(i));
    out
}

fn matches_instance(i: u32, body: &[u8]) -> bool {
    let header = synthetic(i).header();
    body.len() == header.len() + pixels(i).len()
        && body[..header.len()] == header[..]
        && body[header.len()..] == *pixels(i)
}

/// A seeded pseudo-random source (the seed is printed so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// What the clients know.
#[derive(Default)]
struct Model {
    next: u32,
    /// Acknowledged (or confirmed after a restart) and not deleted.
    live: BTreeSet<u32>,
    /// Being deleted right now.
    deleting: BTreeSet<u32>,
    /// Stores and deletes whose answer was lost to a kill.
    uncertain_stores: BTreeSet<u32>,
    uncertain_deletes: BTreeSet<u32>,
    /// Deletes acknowledged with 204.
    deleted: BTreeSet<u32>,
}

#[derive(Default)]
struct Counts {
    stores: AtomicU64,
    deletes: AtomicU64,
    retrieves: AtomicU64,
}

fn instance_url(base: &str, i: u32) -> String {
    format!("{base}/v2/studies/{STUDY}/series/{SERIES}/instances/{SERIES}.{i}")
}

async fn stow(client: &reqwest::Client, base: &str, i: u32) -> Result<(u16, Value), ()> {
    let (body, content_type) = dicom_multipart("kill-loop", &[bytes(i)]);
    let response = client
        .post(format!("{base}/v2/studies"))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .await
        .map_err(drop)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(drop)?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// The failure reason of a one-instance STOW response, if it failed.
fn failure_reason(body: &Value) -> Option<u64> {
    body["00081198"]["Value"][0]["00081197"]["Value"][0].as_u64()
}

/// One client: random operations until `stop`.
async fn run_client(
    base: String,
    model: Arc<Mutex<Model>>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        // Stores dominate until the study is big enough; then deletes keep it bounded.
        let crowded = model.lock().unwrap().live.len() > 100;
        let roll = rng.below(100);
        let (store_below, delete_below) = if crowded { (30, 65) } else { (55, 72) };
        let pick = |rng: &mut Rng, model: &Model| {
            let candidates: Vec<u32> = model.live.difference(&model.deleting).copied().collect();
            (!candidates.is_empty())
                .then(|| candidates[rng.below(candidates.len() as u64) as usize])
        };
        if roll < store_below || model.lock().unwrap().live.len() < 10 {
            let i = {
                let mut m = model.lock().unwrap();
                m.next += 1;
                m.next
            };
            match stow(&client, &base, i).await {
                Ok((200, _)) => {
                    model.lock().unwrap().live.insert(i);
                    counts.stores.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => {
                    // Only a shutdown or a kill may fail a store; never a stale reservation.
                    assert_ne!(failure_reason(&body), Some(45071), "{status} {body}");
                    model.lock().unwrap().uncertain_stores.insert(i);
                }
                Err(()) => {
                    model.lock().unwrap().uncertain_stores.insert(i);
                }
            }
        } else if roll < delete_below {
            let Some(i) = ({
                let mut m = model.lock().unwrap();
                let i = pick(&mut rng, &m);
                if let Some(i) = i {
                    m.deleting.insert(i);
                }
                i
            }) else {
                continue;
            };
            let response = client.delete(instance_url(&base, i)).send().await;
            let mut m = model.lock().unwrap();
            m.deleting.remove(&i);
            match response.map(|r| r.status().as_u16()) {
                Ok(204) => {
                    m.live.remove(&i);
                    m.deleted.insert(i);
                    counts.deletes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(status) => panic!("delete of live instance {i} answered {status}"),
                Err(_) => {
                    m.live.remove(&i);
                    m.uncertain_deletes.insert(i);
                }
            }
        } else {
            let Some(i) = pick(&mut rng, &model.lock().unwrap()) else {
                continue;
            };
            let response = client
                .get(instance_url(&base, i))
                .header("Accept", "application/dicom")
                .send()
                .await;
            let Ok(response) = response else { continue };
            let status = response.status().as_u16();
            let Ok(body) = response.bytes().await else {
                continue;
            };
            {
                let m = model.lock().unwrap();
                if !m.live.contains(&i) || m.deleting.contains(&i) {
                    continue;
                }
            }
            assert_eq!(status, 200, "retrieve of live instance {i}");
            assert!(matches_instance(i, &body), "instance {i} differs");
            counts.retrieves.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn env(phase: Phase) -> Vec<(&'static str, &'static str)> {
    let format = match phase {
        Phase::Seed => "Old",
        Phase::Copy => "Dual",
        Phase::DeleteOld | Phase::Done => "New",
    };
    vec![
        ("DicomServer__Services__BlobMigration__FormatType", format),
        (
            "DicomServer__Services__BlobMigration__StartCopy",
            if phase == Phase::Copy {
                "true"
            } else {
                "false"
            },
        ),
        (
            "DicomServer__Services__BlobMigration__StartDelete",
            if phase == Phase::Seed || phase == Phase::Copy {
                "false"
            } else {
                "true"
            },
        ),
        ("Tessera__OperationLease", "00:00:01"),
        ("Tessera__StaleStoreTimeout", "00:00:03"),
        ("Tessera__SweepInterval", "00:00:01"),
        ("Tessera__ShutdownTimeout", "00:00:05"),
        (
            "DicomServer__Services__DeletedInstanceCleanup__DeleteDelay",
            "00:00:02",
        ),
        (
            "DicomServer__Services__DeletedInstanceCleanup__PollingInterval",
            "00:00:01",
        ),
        (
            "DicomServer__Services__DeletedInstanceCleanup__RetryBackOff",
            "00:00:01",
        ),
        ("DicomFunctions__Copy__Batching__Size", "1"),
        ("DicomFunctions__Copy__Batching__MaxParallelCount", "1"),
        ("DicomFunctions__MigrationDeletion__Batching__Size", "1"),
        (
            "DicomFunctions__MigrationDeletion__Batching__MaxParallelCount",
            "1",
        ),
        ("DicomFunctions__BlobMigration__MaxParallelThreads", "1"),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Seed,
    Copy,
    DeleteOld,
    Done,
}

/// Whether a file is the filesystem backend's temporary file of a put (`NAME#N`): invisible
/// to the blob API (never listed or read), left behind when a process dies during the put.
fn is_put_temp_file(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn put_temp_files(root: &Path) -> usize {
    ["dicomwebcontainer", "metadatacontainer"]
        .iter()
        .flat_map(|c| files_under(&root.join(c)))
        .filter(|n| is_put_temp_file(n))
        .count()
}

/// Every blob (staging blobs aside), with the watermark its name carries.
fn blobs(root: &Path) -> Vec<(String, Watermark)> {
    let mut out = Vec::new();
    for container in ["dicomwebcontainer", "metadatacontainer"] {
        for name in files_under(&root.join(container)) {
            if name.starts_with(STAGING_PREFIX) || is_put_temp_file(&name) {
                continue;
            }
            let watermark = match parse_name(&name) {
                Some(ParsedName::Old { instance, .. }) => instance.watermark(),
                Some(ParsedName::New { watermark, .. }) => watermark,
                None => panic!("unexpected blob {container}/{name}"),
            };
            out.push((format!("{container}/{name}"), watermark));
        }
    }
    out
}

fn staging(root: &Path) -> Vec<String> {
    ["dicomwebcontainer", "metadatacontainer"]
        .iter()
        .flat_map(|c| files_under(&root.join(c).join(STAGING_PREFIX)))
        .filter(|n| !is_put_temp_file(n))
        .collect()
}

/// While the server is dead: every blob has a row (an instance, or a queued removal), and every
/// `Created` row has its file and metadata (under either layout) and its frame ranges.
async fn check_at_rest(index: &InstanceIndex, root: &Path, live: &BTreeSet<u32>) -> usize {
    for (name, watermark) in blobs(root) {
        assert!(
            index.is_referenced(watermark).await.unwrap(),
            "blob {name} has no index row"
        );
    }
    let created = index
        .instances(&RetrieveScope::Study(Uid::parse(STUDY).unwrap()))
        .await
        .unwrap();
    let exists = |container: &str, name: String| root.join(container).join(name).is_file();
    for stored in &created {
        let instance: &VersionedInstance = &stored.instance;
        let has = |file: bool| {
            [BlobLayout::New, BlobLayout::Old].iter().any(|layout| {
                if file {
                    exists("dicomwebcontainer", layout.file(instance).to_string())
                } else {
                    exists("metadatacontainer", layout.metadata(instance).to_string())
                }
            })
        };
        assert!(has(true), "Created row {instance:?} has no file");
        let i: u32 = instance
            .id()
            .sop
            .as_str()
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let file = [BlobLayout::New, BlobLayout::Old]
            .iter()
            .map(|layout| {
                root.join("dicomwebcontainer")
                    .join(layout.file(instance).to_string())
            })
            .find(|path| path.is_file())
            .unwrap();
        assert!(
            matches_instance(i, &std::fs::read(&file).unwrap()),
            "the file of Created row {instance:?} differs"
        );
        assert!(has(false), "Created row {instance:?} has no metadata");
        if stored.has_frame_ranges {
            assert!(
                exists(
                    "metadatacontainer",
                    frame_ranges(instance.watermark()).to_string()
                ),
                "Created row {instance:?} has no frame ranges"
            );
        }
    }
    let numbers: BTreeSet<u32> = created
        .iter()
        .map(|s| {
            s.instance
                .id()
                .sop
                .as_str()
                .rsplit('.')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let missing: Vec<_> = live.difference(&numbers).collect();
    assert!(missing.is_empty(), "acknowledged but gone: {missing:?}");
    created.len()
}

async fn operation_status(index: &InstanceIndex, id: &str) -> Option<String> {
    index
        .operation(id)
        .await
        .unwrap()
        .map(|op| op.status.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_loop() {
    let started = Instant::now();
    let seed = std::env::var("KILL_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill loop seed {seed} (replay with KILL_LOOP_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data/blobs");
    let model = Arc::new(Mutex::new(Model::default()));
    let counts = Arc::new(Counts::default());

    // Seed: Old names, so the copy has work.
    let server = TestServer::start(tessera(), dir.path(), &env(Phase::Seed));
    let seeded: Vec<u32> = (1..=SEEDED).collect();
    for chunk in seeded.chunks(25) {
        let parts: Vec<Vec<u8>> = chunk.iter().map(|&i| bytes(i)).collect();
        let (status, body) = server.stow("/v2/studies", &parts).await;
        assert_eq!(status, 200, "{body}");
        model.lock().unwrap().live.extend(chunk);
    }
    model.lock().unwrap().next = SEEDED;
    server.kill();
    let index = InstanceIndex::open(&format!("sqlite://{}/data/index.db", dir.path().display()))
        .await
        .unwrap();

    let mut phase = Phase::Copy;
    let mut kills = 0;
    let mut phase_kills = 0;
    let mut restores = 0;
    loop {
        assert!(
            started.elapsed() < BUDGET,
            "over budget after {kills} kills in phase {phase:?} (seed {seed})"
        );
        let restart = Instant::now();
        let server = TestServer::start(tessera(), dir.path(), &env(phase));
        let base = server.url("");
        // The stores a kill interrupted can be stored again at once.
        let interrupted: Vec<u32> = std::mem::take(&mut model.lock().unwrap().uncertain_stores)
            .into_iter()
            .collect();
        for i in interrupted {
            let (status, body) = stow(&reqwest::Client::new(), &base, i).await.unwrap();
            let reason = failure_reason(&body);
            assert!(
                status == 200 || reason == Some(45070),
                "re-store of interrupted instance {i}: {status} {body}"
            );
            model.lock().unwrap().live.insert(i);
            restores += 1;
        }
        // Deletes whose answer was lost: the instance is either there or gone.
        let unsure: Vec<u32> = std::mem::take(&mut model.lock().unwrap().uncertain_deletes)
            .into_iter()
            .collect();
        let client = reqwest::Client::new();
        for i in unsure {
            let status = client
                .get(instance_url(&base, i))
                .header("Accept", "application/dicom")
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                model.lock().unwrap().live.insert(i);
            } else {
                assert_eq!(status, 404);
            }
        }
        let operation = match phase {
            Phase::Copy => Some(COPY_ID),
            Phase::DeleteOld => Some(DELETE_ID),
            _ => None,
        };
        // The first restarts of an operation phase are killed while the operation runs, as
        // soon as it is seen running: their instances are checked at rest after the kill.
        let operation_kill = operation.is_some() && phase_kills < OPERATION_KILLS;
        if !operation_kill {
            // Every Created row, hence every acknowledged instance, reads back byte for byte.
            let created = index
                .instances(&RetrieveScope::Study(Uid::parse(STUDY).unwrap()))
                .await
                .unwrap();
            let created: BTreeSet<u32> = created
                .iter()
                .map(|s| {
                    let sop = s.instance.id().sop.as_str();
                    sop.rsplit('.').next().unwrap().parse().unwrap()
                })
                .collect();
            {
                let m = model.lock().unwrap();
                let missing: Vec<_> = m.live.difference(&created).collect();
                assert!(missing.is_empty(), "acknowledged but gone: {missing:?}");
                let back: Vec<_> = m.deleted.intersection(&created).collect();
                assert!(back.is_empty(), "deleted but present: {back:?}");
            }
            futures::stream::iter(created.iter().copied())
                .map(|i| {
                    let (client, base) = (client.clone(), base.clone());
                    async move {
                        let response = client
                            .get(instance_url(&base, i))
                            .header("Accept", "application/dicom")
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 200, "instance {i}");
                        assert!(
                            matches_instance(i, &response.bytes().await.unwrap()),
                            "instance {i} differs"
                        );
                    }
                })
                .buffer_unordered(4)
                .collect::<Vec<()>>()
                .await;
            // Created but never acknowledged (the answer was lost): known now.
            model.lock().unwrap().live.extend(created.iter().copied());
        }
        let checks = restart.elapsed().as_millis();

        if phase == Phase::Done && kills >= MIN_KILLS {
            let status =
                tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
                    .await
                    .unwrap()
                    .expect("a graceful stop");
            assert!(status.success());
            break;
        }

        // Traffic, then a kill at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(run_client(
                    base.clone(),
                    model.clone(),
                    counts.clone(),
                    stop.clone(),
                    rng.below(u64::MAX),
                ))
            })
            .collect();
        let cycle = Instant::now();
        match operation {
            Some(id) if operation_kill => {
                // Kill while the operation is seen running (if it ends first, after it).
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let response = client
                        .get(format!("{base}/v2/operations/{id}"))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    if status == 202 && body["results"]["processed"].as_u64().unwrap_or(0) > 0 {
                        tokio::time::sleep(Duration::from_millis(rng.below(150))).await;
                        break;
                    }
                    if body["status"] == "succeeded" {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Some(id) => {
                // Enough kills in this operation: let it finish. The clients pause meanwhile,
                // since on 2 cores a copy of one instance per round under their traffic can
                // take minutes; the kills during the operation happened under traffic.
                stop.store(true, Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(40);
                while Instant::now() < deadline
                    && operation_status(&index, id).await.as_deref() != Some("succeeded")
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
            }
            None => {
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
            }
        }
        let window = cycle.elapsed().as_millis();
        stop.store(true, Ordering::Relaxed);
        server.kill();
        kills += 1;
        phase_kills += 1;
        for c in clients {
            c.await.unwrap();
        }
        let live = model.lock().unwrap().live.clone();
        let created = check_at_rest(&index, &root, &live).await;
        let copy = operation_status(&index, COPY_ID).await;
        let delete = operation_status(&index, DELETE_ID).await;
        println!(
            "kill {kills} after {window} ms ({phase:?}; restart and checks {checks} ms): {created} created, copy {copy:?}, delete-old {delete:?}"
        );
        let next = match phase {
            Phase::Copy if copy.as_deref() == Some("succeeded") => Phase::DeleteOld,
            Phase::DeleteOld if delete.as_deref() == Some("succeeded") => Phase::Done,
            other => other,
        };
        if next != phase {
            phase = next;
            phase_kills = 0;
        }
    }

    // After the cleanup and the sweeper ran: no blob without a Created row, no staging blob.
    let server = TestServer::start(tessera(), dir.path(), &env(Phase::Done));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let created: BTreeSet<Watermark> = index
            .instances(&RetrieveScope::Study(Uid::parse(STUDY).unwrap()))
            .await
            .unwrap()
            .iter()
            .map(|s| s.instance.watermark())
            .collect();
        let strays: Vec<String> = blobs(&root)
            .into_iter()
            .filter(|(_, w)| !created.contains(w))
            .map(|(name, _)| name)
            .chain(staging(&root))
            .collect();
        if strays.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blobs without a Created row after the sweep: {strays:?} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("a graceful stop");
    assert!(status.success());
    let m = model.lock().unwrap();
    println!(
        "kill loop seed {seed}: {kills} kills in {:.1}s; acknowledged {} stores, {} deletes, {} retrieves; {} interrupted stores stored again; {} instances live; {} put temp files left by kills",
        started.elapsed().as_secs_f64(),
        counts.stores.load(Ordering::Relaxed),
        counts.deletes.load(Ordering::Relaxed),
        counts.retrieves.load(Ordering::Relaxed),
        restores,
        m.live.len(),
        put_temp_files(&root),
    );
    assert!(kills >= MIN_KILLS);
}
