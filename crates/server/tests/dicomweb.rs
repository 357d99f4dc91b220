//! DICOMweb against a real server process over HTTP: STOW-RS, WADO-RS (instances, metadata,
//! frames), DELETE, the change feed, and the blob names each FormatType writes. The suite runs
//! once on each blob backend: the filesystem (the embedded defaults), Azurite and S3.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tessera_testkit::server::{TestServer, eventually, files_under, testdata};
use tessera_testkit::synthetic::Synthetic;
use tessera_testkit::{Backend, Container, ServerBlobs, eventually_async};

fn start(dir: &Path, blobs: &ServerBlobs, env: &[(&str, &str)]) -> TestServer {
    let mut all = blobs.env();
    all.extend_from_slice(&[
        (
            "DicomServer__Services__DeletedInstanceCleanup__DeleteDelay",
            "00:00:01",
        ),
        (
            "DicomServer__Services__DeletedInstanceCleanup__PollingInterval",
            "00:00:01",
        ),
    ]);
    all.extend_from_slice(env);
    TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir, &all)
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(testdata().join(name)).unwrap()
}

/// One instance per distinct identity among the samples.
const SAMPLES: [&str; 8] = [
    "blue-circle.dcm",
    "green-square.dcm",
    "red-triangle.dcm",
    "case1_008.dcm",
    "layer1.dcm",
    "layer9.dcm",
    "XRJPEGProcess1.dcm",
    "transfer-syntaxes/ExplicitVRLittleEndian.dcm",
];

async fn stow(server: &TestServer, path: &str, parts: &[Vec<u8>]) -> (u16, Value) {
    server.stow(path, parts).await
}

fn sequence<'a>(dataset: &'a Value, tag: &str) -> Vec<&'a Value> {
    dataset[tag]["Value"]
        .as_array()
        .map(|items| items.iter().collect())
        .unwrap_or_default()
}

fn first_value(item: &Value, tag: &str) -> Value {
    item[tag]["Value"][0].clone()
}

/// The UIDs of a sample, read with dicom-rs independently of Tessera's own reader.
fn uids(bytes: &[u8]) -> (String, String, String) {
    let object = dicom_object::from_reader(&bytes[128..]).unwrap();
    let get = |tag| {
        object
            .element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_owned()
    };
    use dicom_dictionary_std::tags;
    (
        get(tags::STUDY_INSTANCE_UID),
        get(tags::SERIES_INSTANCE_UID),
        get(tags::SOP_INSTANCE_UID),
    )
}

async fn get(server: &TestServer, path: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(server.url(path))
        .header("Accept", accept)
        .send()
        .await
        .unwrap()
}

/// Splits a multipart/related response into its parts' bodies.
async fn parts(response: reqwest::Response) -> Vec<Bytes> {
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let mut multipart = multer::Multipart::new(response.bytes_stream(), boundary);
    let mut out = Vec::new();
    while let Some(field) = multipart.next_field().await.unwrap() {
        out.push(field.bytes().await.unwrap());
    }
    out
}

fn instance_path((study, series, sop): &(String, String, String)) -> String {
    format!("/studies/{study}/series/{series}/instances/{sop}")
}

async fn store_retrieve_conflict_and_validation(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let files: Vec<Vec<u8>> = SAMPLES.iter().map(|name| sample(name)).collect();

    let (status, body) = stow(&server, "/v1/studies", &files).await;
    assert_eq!(status, 200, "{body}");
    let referenced = sequence(&body, "00081199");
    assert_eq!(referenced.len(), SAMPLES.len());
    for (file, item) in files.iter().zip(&referenced) {
        let (study, series, sop) = uids(file);
        assert_eq!(first_value(item, "00081155"), Value::from(sop.clone()));
        let url = first_value(item, "00081190");
        assert!(
            url.as_str().unwrap().ends_with(&format!(
                "/v1/studies/{study}/series/{series}/instances/{sop}"
            )),
            "{url}"
        );
    }
    let warnings: Vec<_> = referenced
        .iter()
        .map(|item| first_value(item, "00081196"))
        .collect();
    assert_eq!(
        warnings[3],
        Value::from(45063),
        "the implicit-VR file carries warning 45063"
    );
    assert_eq!(warnings.iter().filter(|w| !w.is_null()).count(), 1);

    // Again: every instance conflicts.
    let (status, body) = stow(&server, "/v1/studies", &files).await;
    assert_eq!(status, 409, "{body}");
    let failed = sequence(&body, "00081198");
    assert_eq!(failed.len(), SAMPLES.len());
    assert!(
        failed
            .iter()
            .all(|item| first_value(item, "00081197") == 45070)
    );

    // Mixed: one new, one duplicate.
    let new = Synthetic::new("1.2.3.100", "1.2.3.100.1", "1.2.3.100.1.1").bytes();
    let (status, body) = stow(&server, "/v2/studies", &[new.clone(), files[0].clone()]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(sequence(&body, "00081199").len(), 1);
    assert_eq!(
        first_value(sequence(&body, "00081198")[0], "00081197"),
        Value::from(45070)
    );

    // Study UID in the URL that the payload does not match; malformed UID in the URL.
    let other = Synthetic::new("1.2.3.200", "1.2.3.200.1", "1.2.3.200.1.1").bytes();
    let (status, body) = stow(&server, "/v1/studies/1.2.3.999", &[other]).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        first_value(sequence(&body, "00081198")[0], "00081197"),
        Value::from(43265)
    );
    let (status, _) = stow(&server, "/v1/studies/1.2.a", std::slice::from_ref(&new)).await;
    assert_eq!(status, 400);

    // Every instance comes back byte for byte, alone and within its study.
    for file in &files {
        let id = uids(file);
        let response = get(
            &server,
            &format!("/v1{}", instance_path(&id)),
            "application/dicom",
        )
        .await;
        assert_eq!(response.status(), 200);
        assert!(
            response.bytes().await.unwrap() == file.as_slice(),
            "{id:?} differs"
        );
    }
    let study = uids(&files[0]).0;
    let response = get(
        &server,
        &format!("/v1/studies/{study}"),
        "multipart/related; type=\"application/dicom\"",
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut returned = parts(response).await;
    let mut expected: Vec<Bytes> = files[..3].iter().map(|f| Bytes::from(f.clone())).collect();
    returned.sort();
    expected.sort();
    assert_eq!(returned, expected, "the study's three instances, each once");

    // A transfer syntax Tessera cannot produce (it keeps no JPEG 2000 encoder).
    let jpeg = uids(&files[6]);
    let response = get(
        &server,
        &format!("/v1{}", instance_path(&jpeg)),
        "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.90",
    )
    .await;
    assert_eq!(response.status(), 406);
    let response = get(&server, "/v1/studies/1.2.3.404", "*/*").await;
    assert_eq!(response.status(), 404);
}

async fn a_non_dicom_part_leaves_nothing_behind(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let (status, body) = stow(
        &server,
        "/v1/studies",
        &[b"this is not a DICOM file at all".to_vec()],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        first_value(sequence(&body, "00081198")[0], "00081197"),
        Value::from(43264)
    );
    let feed: Value = server.get_json("/v1/changefeed").await;
    assert_eq!(feed, Value::Array(vec![]), "no index row");
    assert!(blobs.all_names().await.is_empty(), "no blob");

    let response = reqwest::Client::new()
        .post(server.url("/v1/studies"))
        .header("Content-Type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

async fn metadata_has_no_meta_group_nor_bulk_data_and_honours_etags(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let files: Vec<Vec<u8>> = SAMPLES[..3].iter().map(|name| sample(name)).collect();
    assert_eq!(stow(&server, "/v2/studies", &files).await.0, 200);
    let study = uids(&files[0]).0;
    let path = format!("/v2/studies/{study}/metadata");
    let response = get(&server, &path, "application/dicom+json").await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let metadata: Value = response.json().await.unwrap();
    let items = metadata.as_array().unwrap();
    assert_eq!(items.len(), 3);
    for item in items {
        let object = item.as_object().unwrap();
        assert!(object.contains_key("0020000D"));
        assert!(!object.keys().any(|k| k.starts_with("0002")));
        assert!(!object.contains_key("7FE00010"));
        assert!(object.values().all(|v| !matches!(
            v["vr"].as_str(),
            Some("OB" | "OW" | "OD" | "OF" | "OL" | "OV" | "UN")
        )));
    }
    let again = reqwest::Client::new()
        .get(server.url(&path))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let id = uids(&files[1]);
    let one: Value = server
        .get_json(&format!("/v2{}/metadata", instance_path(&id)))
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
}

async fn frames_are_served_by_range_reads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let layer1 = sample("layer1.dcm");
    let synthetic = Synthetic::new("1.2.3.300", "1.2.3.300.1", "1.2.3.300.1.1");
    assert_eq!(
        stow(&server, "/v1/studies", &[layer1.clone(), synthetic.bytes()])
            .await
            .0,
        200
    );

    let object = dicom_object::from_reader(&layer1[128..]).unwrap();
    let pixel = object
        .element(dicom_dictionary_std::tags::PIXEL_DATA)
        .unwrap();
    let first_fragment = pixel.fragments().unwrap()[0].clone();
    let id = uids(&layer1);
    let response = get(
        &server,
        &format!("/v1{}/frames/1", instance_path(&id)),
        "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(parts(response).await, vec![Bytes::from(first_fragment)]);

    let id = (
        synthetic.study.clone(),
        synthetic.series.clone(),
        synthetic.sop.clone(),
    );
    let response = get(
        &server,
        &format!("/v1{}/frames/3,1,2", instance_path(&id)),
        "multipart/related; type=\"application/octet-stream\"",
    )
    .await;
    assert_eq!(response.status(), 200);
    let expected: Vec<Bytes> = [2, 0, 1]
        .iter()
        .map(|&i| Bytes::from(synthetic.frame(i)))
        .collect();
    assert_eq!(parts(response).await, expected);
    let missing = get(
        &server,
        &format!("/v1{}/frames/4", instance_path(&id)),
        "*/*",
    )
    .await;
    assert_eq!(missing.status(), 404);
    let bad = get(
        &server,
        &format!("/v1{}/frames/0", instance_path(&id)),
        "*/*",
    )
    .await;
    assert_eq!(bad.status(), 400);
}

async fn delete_hides_at_once_and_removes_blobs_after_the_delay(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let synthetic = Synthetic::new("1.2.3.400", "1.2.3.400.1", "1.2.3.400.1.1");
    assert_eq!(
        stow(&server, "/v2/studies", &[synthetic.bytes()]).await.0,
        200
    );
    assert_eq!(
        blobs.all_names().await.len(),
        2,
        "file and metadata (native frames are located by the index)"
    );
    let path = instance_path(&(
        synthetic.study.clone(),
        synthetic.series.clone(),
        synthetic.sop.clone(),
    ));

    let client = reqwest::Client::new();
    assert_eq!(
        client
            .delete(server.url(&format!("/v2{path}")))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        client
            .delete(server.url(&format!("/v2{path}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get(&server, &format!("/v2{path}"), "*/*").await.status(),
        404
    );

    let feed: Value = server.get_json("/v2/changefeed").await;
    let actions: Vec<&str> = feed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "delete"]);
    assert!(
        feed.as_array()
            .unwrap()
            .iter()
            .all(|e| e["state"] == "deleted")
    );
    let latest: Value = server.get_json("/v1/changefeed/latest").await;
    assert_eq!(latest["action"], "delete");

    eventually_async(
        "the blobs are removed after the delete delay",
        Duration::from_secs(10),
        async || blobs.all_names().await.is_empty(),
    )
    .await;
}

async fn change_feed_windows_and_metadata(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let instances: Vec<Vec<u8>> = (1..=3)
        .map(|i| Synthetic::new("1.2.3.500", "1.2.3.500.1", &format!("1.2.3.500.1.{i}")).bytes())
        .collect();
    assert_eq!(stow(&server, "/v1/studies", &instances).await.0, 200);
    // The parts of one request are stored side by side, so their order in the feed is theirs
    // to finish in: the window is checked against the whole feed.
    let all: Value = server.get_json("/v1/changefeed").await;
    let all = all.as_array().unwrap();
    let mut sops: Vec<_> = all
        .iter()
        .map(|e| e["metadata"]["00080018"]["Value"][0].as_str().unwrap())
        .collect();
    sops.sort();
    assert_eq!(sops, ["1.2.3.500.1.1", "1.2.3.500.1.2", "1.2.3.500.1.3"]);
    let window: Value = server.get_json("/v1/changefeed?offset=1&limit=1").await;
    let window = window.as_array().unwrap();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0]["sequence"], 2);
    assert_eq!(window[0]["state"], "current");
    assert_eq!(window[0], all[1]);
    // v2 orders by time, and side-by-side stores may commit in another order than their
    // timestamps: the page is checked against the whole v2 feed.
    let all_v2: Value = server
        .get_json("/v2/changefeed?includeMetadata=false")
        .await;
    let all_v2 = all_v2.as_array().unwrap();
    assert_eq!(all_v2.len(), 3);
    let paged: Value = server
        .get_json("/v2/changefeed?offset=2&limit=5&includeMetadata=false")
        .await;
    let paged = paged.as_array().unwrap();
    assert_eq!(paged.len(), 1);
    assert_eq!(paged[0], all_v2[2]);
    assert!(paged[0].get("metadata").is_none());
    assert_eq!(
        get(&server, "/v1/changefeed?limit=101", "application/json")
            .await
            .status(),
        400
    );
}

async fn each_format_type_writes_exactly_its_names(backend: Backend) {
    let synthetic = Synthetic::new("1.2.3.600", "1.2.3.600.1", "1.2.3.600.1.1");
    for (format, files, metadata) in [
        (
            "Old",
            vec!["1.2.3.600/1.2.3.600.1/1.2.3.600.1.1_1.dcm"],
            vec!["1.2.3.600/1.2.3.600.1/1.2.3.600.1.1_1_metadata.json"],
        ),
        (
            "Dual",
            vec!["1.2.3.600/1.2.3.600.1/1.2.3.600.1.1_1.dcm", "132_1.dcm"],
            vec![
                "132_1_metadata.json",
                "1.2.3.600/1.2.3.600.1/1.2.3.600.1.1_1_metadata.json",
            ],
        ),
        ("New", vec!["132_1.dcm"], vec!["132_1_metadata.json"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
            return;
        };
        let server = start(
            dir.path(),
            &blobs,
            &[("DicomServer__Services__BlobMigration__FormatType", format)],
        );
        assert_eq!(
            stow(&server, "/v1/studies", &[synthetic.bytes()]).await.0,
            200
        );
        let mut expected_files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        let mut expected_metadata: Vec<String> = metadata.iter().map(|f| f.to_string()).collect();
        expected_files.sort();
        expected_metadata.sort();
        assert_eq!(
            blobs.names(Container::Files).await,
            expected_files,
            "{format}"
        );
        assert_eq!(
            blobs.names(Container::Metadata).await,
            expected_metadata,
            "{format}"
        );
        let path = instance_path(&(
            synthetic.study.clone(),
            synthetic.series.clone(),
            synthetic.sop.clone(),
        ));
        let body = get(&server, &format!("/v1{path}"), "application/dicom")
            .await
            .bytes()
            .await
            .unwrap();
        assert!(body == synthetic.bytes().as_slice(), "{format}: retrieve");
    }
}

/// Filesystem only: elsewhere an unfinished multipart upload is not a blob that can be listed
/// (S3 and Azure keep uncommitted parts and blocks out of sight until they expire).
#[tokio::test]
async fn a_store_killed_midway_is_swept_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(Backend::FileSystem, dir.path()).await else {
        return;
    };
    let env = [
        ("Tessera__StaleStoreTimeout", "00:00:01"),
        ("Tessera__SweepInterval", "00:00:01"),
    ];
    let server = start(dir.path(), &blobs, &env);
    let mut big = Synthetic::new("1.2.3.700", "1.2.3.700.1", "1.2.3.700.1.1");
    (big.rows, big.columns, big.frames) = (1024, 1024, 24);
    let bytes = big.bytes();

    // Send 16 MiB of a 24 MiB instance, then hang until the server is killed.
    let (_hold, hang) = tokio::sync::oneshot::channel::<()>();
    let sent: Vec<Result<Bytes, std::io::Error>> = bytes[..16 << 20]
        .chunks(1 << 20)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = futures::stream::iter(sent).chain(futures::stream::once(async move {
        let _ = hang.await;
        Err(std::io::Error::other("never sent"))
    }));
    use futures::StreamExt;
    let request = reqwest::Client::new()
        .post(server.url("/v1/studies"))
        .header("Content-Type", "application/dicom")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let pending = tokio::spawn(request);
    let staging = dir
        .path()
        .join("data/blobs/dicomwebcontainer/tessera-staging");
    eventually("the upload reaches the blob store", || {
        !files_under(&staging).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let _ = pending.await;
    assert!(
        !files_under(&staging).is_empty(),
        "a partial upload was left by the crash"
    );

    let server = start(dir.path(), &blobs, &env);
    let blobs = dir.path().join("data/blobs");
    eventually("the sweep removes every blob", || {
        files_under(&blobs).is_empty()
    })
    .await;
    let path = instance_path(&(big.study.clone(), big.series.clone(), big.sop.clone()));
    assert_eq!(
        get(&server, &format!("/v1{path}"), "*/*").await.status(),
        404
    );
    // The reservation is gone too: the same instance stores anew (not 45071).
    let (status, body) = stow(&server, "/v1/studies", &[bytes]).await;
    assert_eq!(status, 200, "{body}");
}

async fn invalid_searchable_attributes_fail_v1_and_warn_v2(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };
    let server = start(dir.path(), &blobs, &[]);
    let mut synthetic = Synthetic::new("1.2.3.800", "1.2.3.800.1", "1.2.3.800.1.1");
    synthetic.study_date = "NotAValidDate".into();
    let bytes = synthetic.bytes();

    let (status, body) = stow(&server, "/v1/studies", std::slice::from_ref(&bytes)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        first_value(sequence(&body, "00081198")[0], "00081197"),
        43264
    );

    let (status, body) = stow(&server, "/v2/studies", std::slice::from_ref(&bytes)).await;
    assert_eq!(status, 202, "{body}");
    let item = sequence(&body, "00081199")[0];
    assert_eq!(first_value(item, "00081196"), 1);
    let comment = first_value(&item["00741048"]["Value"][0], "00000902");
    assert!(
        comment.as_str().unwrap().contains("(0008,0020)"),
        "{comment}"
    );

    let path = instance_path(&(
        synthetic.study.clone(),
        synthetic.series.clone(),
        synthetic.sop.clone(),
    ));
    let metadata: Value = server.get_json(&format!("/v2{path}/metadata")).await;
    assert!(
        metadata[0].get("00080020").is_none(),
        "the invalid attribute is left out of the metadata"
    );
    let file = get(&server, &format!("/v2{path}"), "application/dicom")
        .await
        .bytes()
        .await
        .unwrap();
    assert!(file == bytes.as_slice(), "the stored file keeps it");
}

/// Runs each suite case once on each blob backend (a test binary of its own per backend would
/// cost a link each).
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod filesystem { use super::*; $( #[tokio::test] async fn $case() { super::$case(Backend::FileSystem).await } )* }
        mod azurite { use super::*; $( #[tokio::test] async fn $case() { super::$case(Backend::Azurite).await } )* }
        mod s3 { use super::*; $( #[tokio::test] async fn $case() { super::$case(Backend::S3).await } )* }
    };
}

on_every_backend!(
    store_retrieve_conflict_and_validation,
    a_non_dicom_part_leaves_nothing_behind,
    metadata_has_no_meta_group_nor_bulk_data_and_honours_etags,
    frames_are_served_by_range_reads,
    delete_hides_at_once_and_removes_blobs_after_the_delay,
    change_feed_windows_and_metadata,
    invalid_searchable_attributes_fail_v1_and_warn_v2,
    each_format_type_writes_exactly_its_names,
);
