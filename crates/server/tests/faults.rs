//! Store, retrieve, delete, deleted-instance cleanup, copy, delete-old, cleanup-deleted and
//! `tessera adopt` against real server processes whose blob store fails 10 % of its calls, cuts
//! 10 % of its read streams and adds latency (`Tessera:FaultInjection:*`). Every request must
//! succeed or fail cleanly; operations are re-run until they complete. Afterwards, without
//! faults: no index row lacks its blobs, no blob lacks a row, and every acknowledged instance
//! reads back byte for byte.
//!
//! The seed is printed; `TESSERA_FAULT_SEED=N` replays a run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tessera_index::InstanceIndex;
use tessera_testkit::server::{TestServer, command, files_under, testdata};
use tessera_testkit::synthetic::Synthetic;

const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";
const DELETE_ID: &str = "ce38a27eb1944645b47afe91c38c330f";
const CLEANUP_ID: &str = "d32a04699c274df3a1e812f7f8fecbc8";
const STUDY: &str = "1.2.3.1000";
const SERIES: &str = "1.2.3.1000.1";
const SAMPLES: [&str; 7] = [
    "blue-circle.dcm",
    "green-square.dcm",
    "red-triangle.dcm",
    "case1_008.dcm",
    "layer1.dcm",
    "layer9.dcm",
    "XRJPEGProcess1.dcm",
];
/// Attempts of one request before the test gives up on it.
const ATTEMPTS: u32 = 40;

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

/// An instance the test stores: its identity and bytes, and its frames when it is synthetic.
#[derive(Clone)]
struct Stored {
    study: String,
    series: String,
    sop: String,
    bytes: Bytes,
    synthetic: Option<Synthetic>,
}

impl Stored {
    fn synthetic(i: u32, rows: u16, columns: u16, frames: u32) -> Self {
        let mut synthetic = Synthetic::new(STUDY, SERIES, &format!("{SERIES}.{i}"));
        (synthetic.rows, synthetic.columns, synthetic.frames) = (rows, columns, frames);
        synthetic.patient_id = format!("F{i}");
        Self {
            study: STUDY.into(),
            series: SERIES.into(),
            sop: synthetic.sop.clone(),
            bytes: synthetic.bytes().into(),
            synthetic: Some(synthetic),
        }
    }

    fn sample(name: &str) -> Self {
        let bytes = std::fs::read(testdata().join(name)).expect("sample");
        let object = dicom_object::from_reader(&bytes[128..]).expect("sample parses");
        let get = |tag| {
            object
                .element(tag)
                .expect("UID present")
                .to_str()
                .expect("UID text")
                .trim_end_matches('\0')
                .trim()
                .to_owned()
        };
        use dicom_dictionary_std::tags;
        Self {
            study: get(tags::STUDY_INSTANCE_UID),
            series: get(tags::SERIES_INSTANCE_UID),
            sop: get(tags::SOP_INSTANCE_UID),
            bytes: bytes.into(),
            synthetic: None,
        }
    }

    fn path(&self) -> String {
        format!(
            "/v2/studies/{}/series/{}/instances/{}",
            self.study, self.series, self.sop
        )
    }
}

/// What the requests under faults did, for the report.
#[derive(Debug, Default)]
struct Counts {
    stored: u32,
    store_failed_272: u32,
    gets_ok: u32,
    gets_5xx: u32,
    gets_broken: u32,
    deletes_ok: u32,
    deletes_5xx: u32,
    faulty_processes: u32,
    faults_logged: usize,
    lost_responses_logged: usize,
    cuts_logged: usize,
    /// Faults of blob copies: the migration copy's, and the staged uploads' publishing.
    copy_call_faults: usize,
    /// Server runs each operation needed, and the faults injected during them.
    operation_runs: BTreeMap<&'static str, (u32, usize)>,
    adopt_runs: u32,
    adopt_failures: u32,
}

struct Run {
    dir: tempfile::TempDir,
    seed: u64,
    counts: Counts,
    /// Metadata JSON seen with 200 under faults, to compare once faults are off.
    metadata: BTreeMap<String, Value>,
}

impl Run {
    /// The environment of a server: `format`, `extra`, and faults when `faulty`. Each faulty
    /// process gets its own seed, so that a re-run does not meet exactly the same faults.
    fn env(&mut self, format: &str, faulty: bool, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DicomServer__Services__BlobMigration__FormatType", format),
            (
                "DicomServer__Services__DeletedInstanceCleanup__DeleteDelay",
                "00:00:01",
            ),
            (
                "DicomServer__Services__DeletedInstanceCleanup__PollingInterval",
                "00:00:01",
            ),
            (
                "DicomServer__Services__DeletedInstanceCleanup__RetryBackOff",
                "00:00:01",
            ),
            (
                "DicomServer__Services__DeletedInstanceCleanup__MaxRetries",
                "1000",
            ),
            ("Tessera__OperationLease", "00:00:02"),
            ("DicomFunctions__Copy__Batching__Size", "5"),
            ("DicomFunctions__MigrationDeletion__Batching__Size", "5"),
            ("DicomFunctions__CleanupDeleted__Batching__Size", "5"),
            ("DicomFunctions__BlobMigration__MaxParallelThreads", "2"),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if faulty {
            self.counts.faulty_processes += 1;
            let seed = self
                .seed
                .wrapping_add(u64::from(self.counts.faulty_processes));
            for (key, value) in [
                ("Tessera__FaultInjection__FailureRate", "0.1".to_owned()),
                ("Tessera__FaultInjection__CutStreamRate", "0.1".to_owned()),
                (
                    "Tessera__FaultInjection__Latency",
                    "00:00:00.002".to_owned(),
                ),
                ("Tessera__FaultInjection__Seed", seed.to_string()),
            ] {
                env.push((key.to_owned(), value));
            }
        }
        env
    }

    fn start(&self, env: &[(String, String)]) -> TestServer {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        TestServer::start(tessera(), self.dir.path(), &env)
    }

    /// Counts the faults a server logged, then stops it; returns how many it logged.
    fn stop(&mut self, server: TestServer) -> usize {
        let mut logged = 0;
        {
            let lines = server.log.lock().expect("log");
            for line in lines.iter().filter(|l| l.contains("injected fault")) {
                logged += 1;
                self.counts.lost_responses_logged += usize::from(line.contains("after=true"));
                self.counts.cuts_logged += usize::from(line.contains("read stream cut"));
                self.counts.copy_call_faults += usize::from(line.contains("operation=\"copy\""));
            }
        }
        self.counts.faults_logged += logged;
        server.kill();
        logged
    }

    /// Stores `instances` in requests of `per_request` until each is acknowledged: every
    /// instance of every response is either referenced or failed with 272.
    async fn store_all(&mut self, server: &TestServer, instances: &[Stored], per_request: usize) {
        let mut pending: Vec<&Stored> = instances.iter().collect();
        for _ in 0..ATTEMPTS {
            if pending.is_empty() {
                return;
            }
            let mut still = Vec::new();
            for chunk in pending.chunks(per_request) {
                let parts: Vec<Vec<u8>> = chunk.iter().map(|s| s.bytes.to_vec()).collect();
                let (status, body) = server.stow("/v2/studies", &parts).await;
                assert!(matches!(status, 200 | 202 | 409), "STOW {status}: {body}");
                let uids = |tag: &str| -> Vec<(String, Value)> {
                    body[tag]["Value"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|item| {
                                    (
                                        item["00081155"]["Value"][0]
                                            .as_str()
                                            .unwrap_or_default()
                                            .to_owned(),
                                        item["00081197"]["Value"][0].clone(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let referenced = uids("00081199");
                let failed = uids("00081198");
                for instance in chunk {
                    if referenced.iter().any(|(sop, _)| *sop == instance.sop) {
                        self.counts.stored += 1;
                    } else {
                        let reason = failed
                            .iter()
                            .find(|(sop, _)| *sop == instance.sop)
                            .map(|(_, reason)| reason.clone());
                        assert_eq!(
                            reason,
                            Some(Value::from(272)),
                            "{} is neither stored nor failed with 272: {body}",
                            instance.sop
                        );
                        self.counts.store_failed_272 += 1;
                        still.push(*instance);
                    }
                }
            }
            pending = still;
        }
        panic!("{} instances never stored", pending.len());
    }

    /// Reads each instance's file, metadata and (synthetic ones) frames once: each answer is
    /// 200 with exactly the right bytes, a 5xx, or a body the client sees as broken.
    async fn retrieve_all(&mut self, server: &TestServer, instances: &[&Stored]) {
        let client = reqwest::Client::new();
        for instance in instances {
            let file = client
                .get(server.url(&instance.path()))
                .header("Accept", "application/dicom; transfer-syntax=*")
                .send()
                .await;
            if let Some(bytes) = self.body(file, &instance.sop).await {
                assert!(
                    bytes == instance.bytes,
                    "200 with wrong bytes for {}",
                    instance.sop
                );
            }
            let metadata = client
                .get(server.url(&format!("{}/metadata", instance.path())))
                .header("Accept", "application/dicom+json")
                .send()
                .await;
            if let Some(bytes) = self.body(metadata, &instance.sop).await {
                let json = without_host(serde_json::from_slice(&bytes).expect("metadata is JSON"));
                if let Some(seen) = self.metadata.get(&instance.sop) {
                    assert_eq!(&json, seen, "metadata of {} changed", instance.sop);
                }
                self.metadata.insert(instance.sop.clone(), json);
            }
            if let Some(synthetic) = &instance.synthetic {
                let frames = client
                    .get(server.url(&format!("{}/frames/2,1", instance.path())))
                    .header(
                        "Accept",
                        "multipart/related; type=\"application/octet-stream\"",
                    )
                    .send()
                    .await;
                let content_type = frames
                    .as_ref()
                    .ok()
                    .and_then(|f| f.headers().get("content-type"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(bytes) = self.body(frames, &instance.sop).await {
                    let expected = [synthetic.frame(1), synthetic.frame(0)];
                    assert_eq!(
                        parts(&content_type, bytes).await,
                        expected.map(Bytes::from),
                        "200 with wrong frames for {}",
                        instance.sop
                    );
                }
            }
        }
    }

    /// The body of a 200, or `None` after counting a 5xx or a broken response (a connection
    /// closed before the head or in the body, a body shorter than its length).
    async fn body(
        &mut self,
        response: reqwest::Result<reqwest::Response>,
        what: &str,
    ) -> Option<Bytes> {
        let Ok(response) = response else {
            self.counts.gets_broken += 1;
            return None;
        };
        let status = response.status();
        if status.is_server_error() {
            self.counts.gets_5xx += 1;
            return None;
        }
        assert_eq!(status, 200, "{what}");
        match response.bytes().await {
            Ok(bytes) => {
                self.counts.gets_ok += 1;
                Some(bytes)
            }
            Err(_) => {
                self.counts.gets_broken += 1;
                None
            }
        }
    }

    /// Deletes each instance, retrying 5xx; 404 only after an earlier attempt.
    async fn delete_all(&mut self, server: &TestServer, instances: &[&Stored]) {
        let client = reqwest::Client::new();
        for instance in instances {
            let mut deleted = false;
            for _ in 0..ATTEMPTS {
                let status = client
                    .delete(server.url(&instance.path()))
                    .send()
                    .await
                    .expect("DELETE")
                    .status();
                if status == 204 {
                    self.counts.deletes_ok += 1;
                    deleted = true;
                    break;
                }
                assert!(status.is_server_error(), "DELETE {status}");
                self.counts.deletes_5xx += 1;
            }
            assert!(deleted, "{} never deleted", instance.sop);
        }
    }

    /// Runs servers with `format` and `extra` under faults until operation `id` succeeds,
    /// restarting the server (which resumes it and retries its failures) while it ends failed.
    async fn operation_until_succeeded(
        &mut self,
        format: &str,
        extra: &[(&str, &str)],
        id: &'static str,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.counts.operation_runs.entry(id).or_default().0 += 1;
            let env = self.env(format, true, extra);
            let server = self.start(&env);
            loop {
                assert!(Instant::now() < deadline, "operation {id} did not succeed");
                let body = server.get_json(&format!("/v2/operations/{id}")).await;
                match body["status"].as_str() {
                    Some("succeeded") => {
                        let faults = self.stop(server);
                        self.counts.operation_runs.entry(id).or_default().1 += faults;
                        return body;
                    }
                    Some("failed") => break,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let faults = self.stop(server);
            self.counts.operation_runs.entry(id).or_default().1 += faults;
        }
    }
}

/// The parts of a multipart/related body.
async fn parts(content_type: &str, body: Bytes) -> Vec<Bytes> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary")
        .trim_matches('"')
        .to_owned();
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(body)]);
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    while let Some(field) = multipart.next_field().await.expect("a complete part") {
        out.push(field.bytes().await.expect("part bytes"));
    }
    out
}

/// The watermark in a blob name (`…_{W}.dcm`, `…_{W}_metadata.json`,
/// `…_{W}_frames_range.json`).
fn watermark_of(name: &str) -> Option<u64> {
    let stem = name
        .strip_suffix("_frames_range.json")
        .or_else(|| name.strip_suffix("_metadata.json"))
        .or_else(|| name.strip_suffix(".dcm"))?;
    stem.rsplit_once('_')?.1.parse().ok()
}

/// Checks the index at `index_url` against the blobs under `blobs`, without faults: every
/// `Created` row has its New file and metadata, no row is left `Creating`, and every blob
/// belongs to a row. Returns the rows' SOP instance UIDs and watermarks.
async fn check_consistency(index_url: &str, blobs: &Path) -> BTreeMap<String, u64> {
    let index = InstanceIndex::open(index_url).await.expect("index");
    let rows = index.instances_below(None, 100_000).await.expect("rows");
    let creating = index
        .stale_creating(chrono::Utc::now())
        .await
        .expect("creating rows");
    assert!(creating.is_empty(), "rows left Creating: {creating:?}");
    let files: BTreeSet<String> = files_under(&blobs.join("dicomwebcontainer"))
        .into_iter()
        .collect();
    let metadata: BTreeSet<String> = files_under(&blobs.join("metadatacontainer"))
        .into_iter()
        .collect();
    let mut live = BTreeMap::new();
    for row in &rows {
        let w = row.instance.watermark();
        let stem = format!("{}_{}", tessera_blob::layout::hash_prefix(w), w.get());
        assert!(
            files.contains(&format!("{stem}.dcm")),
            "row {w} has no file"
        );
        assert!(
            metadata.contains(&format!("{stem}_metadata.json")),
            "row {w} has no metadata"
        );
        live.insert(row.instance.id().sop.to_string(), w.get());
    }
    let watermarks: BTreeSet<u64> = live.values().copied().collect();
    for name in files.iter().chain(&metadata) {
        let owned = watermark_of(name).is_some_and(|w| watermarks.contains(&w));
        assert!(owned, "blob {name} has no row");
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_succeeds_or_fails_cleanly_under_ten_percent_faults() {
    let started = Instant::now();
    let seed = std::env::var("TESSERA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("fault seed {seed} (replay with TESSERA_FAULT_SEED={seed})");
    let mut run = Run {
        dir: tempfile::tempdir().expect("temporary directory"),
        seed,
        counts: Counts::default(),
        metadata: BTreeMap::new(),
    };
    let mut instances: Vec<Stored> = SAMPLES.iter().map(|name| Stored::sample(name)).collect();
    instances.extend((1..=30).map(|i| Stored::synthetic(i, 64, 64, 3)));
    // 12 MiB: larger than one put, so it goes through a staged multipart upload.
    instances.push(Stored::synthetic(100, 2048, 2048, 3));
    let later: Vec<Stored> = (31..=40).map(|i| Stored::synthetic(i, 64, 64, 3)).collect();

    // 1. Old names: stores one by one and five per request, reads, deletes.
    let env = run.env("Old", true, &[]);
    let server = run.start(&env);
    let (single, multiple) = instances.split_at(12);
    run.store_all(&server, single, 1).await;
    run.store_all(&server, multiple, 5).await;
    let all: Vec<&Stored> = instances.iter().collect();
    run.retrieve_all(&server, &all).await;
    let deleted: Vec<&Stored> = instances[20..25].iter().collect();
    run.delete_all(&server, &deleted).await;
    run.stop(server);
    let mut live: Vec<&Stored> = instances[..20].iter().chain(&instances[25..]).collect();

    // 2. Dual with the copy; more stores, deletes and reads while it runs.
    let copy = [("DicomServer__Services__BlobMigration__StartCopy", "true")];
    let env = run.env("Dual", true, &copy);
    let server = run.start(&env);
    run.store_all(&server, &later, 3).await;
    let deleted_in_dual: Vec<&Stored> = later[..3].iter().collect();
    run.delete_all(&server, &deleted_in_dual).await;
    live.extend(&later[3..]);
    run.retrieve_all(&server, &live).await;
    run.stop(server);
    let copied = run.operation_until_succeeded("Dual", &copy, COPY_ID).await;
    assert_eq!(copied["results"]["failed"], 0, "{copied}");

    // 3. New with delete-old and cleanup-deleted.
    let delete_old = [
        ("DicomServer__Services__BlobMigration__StartDelete", "true"),
        (
            "DicomServer__Services__BlobMigration__CleanupFilterTimeStamp",
            "2000-01-01",
        ),
    ];
    run.operation_until_succeeded("New", &delete_old, DELETE_ID)
        .await;
    run.operation_until_succeeded("New", &delete_old, CLEANUP_ID)
        .await;
    let env = run.env("New", true, &[]);
    let server = run.start(&env);
    run.retrieve_all(&server, &live).await;
    run.stop(server);

    // 4. Without faults, once the sweeper and the cleanup ran: rows and blobs agree, and every
    //    acknowledged instance reads back byte for byte.
    let quiet = [
        ("Tessera__StaleStoreTimeout", "00:00:01"),
        ("Tessera__SweepInterval", "00:00:01"),
    ];
    let env = run.env("New", false, &quiet);
    let server = run.start(&env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let blobs = run.dir.path().join("data/blobs");
    let index_url = format!("sqlite://{}/data/index.db", run.dir.path().display());
    let mut indexed = BTreeMap::new();
    for attempt in 0..20 {
        let result = tokio::spawn({
            let (url, blobs) = (index_url.clone(), blobs.clone());
            async move { check_consistency(&url, &blobs).await }
        })
        .await;
        match result {
            Ok(rows) => {
                indexed = rows;
                break;
            }
            Err(error) if attempt < 19 => {
                println!("not yet consistent: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => panic!("never consistent: {error}"),
        }
    }
    let old_names: Vec<String> = files_under(&blobs)
        .into_iter()
        .filter(|name| name.matches('/').count() > 1)
        .collect();
    assert!(
        old_names.is_empty(),
        "Old names after delete-old: {old_names:?}"
    );
    let expected: BTreeSet<&str> = live.iter().map(|s| s.sop.as_str()).collect();
    let found: BTreeSet<&str> = indexed.keys().map(String::as_str).collect();
    assert_eq!(
        found, expected,
        "the index holds exactly what was acknowledged"
    );
    let before = (run.counts.gets_5xx, run.counts.gets_broken);
    run.retrieve_all(&server, &live).await;
    assert_eq!(
        (run.counts.gets_5xx, run.counts.gets_broken),
        before,
        "without faults every read succeeds"
    );
    run.stop(server);

    // 5. Adopt a copy of the blobs into a fresh index under faults, re-run until it succeeds.
    let adopt_dir = run.dir.path().join("adopted");
    std::fs::create_dir_all(adopt_dir.join("blobs")).expect("adopt folder");
    for container in ["dicomwebcontainer", "metadatacontainer"] {
        for name in files_under(&blobs.join(container)) {
            let to = adopt_dir.join("blobs").join(container).join(&name);
            std::fs::create_dir_all(to.parent().expect("parent")).expect("folder");
            std::fs::copy(blobs.join(container).join(&name), to).expect("copy blob");
        }
    }
    let adopt_paths = [
        ("Tessera__Index", "sqlite://./adopted/index.db"),
        ("Tessera__BlobStore", "file://./adopted/blobs"),
    ];
    loop {
        assert!(run.counts.adopt_runs < 60, "adopt never succeeded");
        let env = run.env("New", true, &adopt_paths);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let output = command(tessera(), run.dir.path(), &["adopt"], &env)
            .output()
            .expect("adopt runs");
        run.counts.adopt_runs += 1;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("fault injection:"),
            "adopt reports its faults: {stderr}"
        );
        if output.status.success() {
            break;
        }
        run.counts.adopt_failures += 1;
        println!(
            "adopt failed (re-run): {} {}",
            stderr.trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    let adopted = check_consistency(
        &format!("sqlite://{}/index.db", adopt_dir.display()),
        &adopt_dir.join("blobs"),
    )
    .await;
    assert_eq!(adopted, indexed, "adoption found every instance");
    let env = run.env("New", false, &adopt_paths);
    let server = run.start(&env);
    let before = (run.counts.gets_5xx, run.counts.gets_broken);
    run.retrieve_all(&server, &live).await;
    assert_eq!((run.counts.gets_5xx, run.counts.gets_broken), before);
    run.stop(server);

    println!(
        "fault seed {seed}: {:?} in {:.1} s",
        run.counts,
        started.elapsed().as_secs_f64()
    );
    assert!(run.counts.faults_logged > 0 && run.counts.cuts_logged > 0);
}

/// Metadata with its BulkDataURIs cut to their path below the base URL: a restarted server
/// listens on another port, and the URIs name it.
fn without_host(mut metadata: Value) -> Value {
    let instances = metadata.as_array_mut().into_iter().flatten();
    for element in instances
        .filter_map(Value::as_object_mut)
        .flat_map(|d| d.values_mut())
    {
        if let Some(uri) = element.get_mut("BulkDataURI")
            && let Some(path) = uri.as_str().and_then(|u| u.split_once("/studies/"))
        {
            *uri = Value::String(path.1.to_owned());
        }
    }
    metadata
}
