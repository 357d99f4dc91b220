//! Adopting a container laid out exactly as the original server writes it, then serving it and
//! migrating it with the documented procedure.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tessera_blob::layout::{hash_prefix, legacy_spaced_frame_ranges};
use tessera_core::Watermark;
use tessera_dicom::{FragmentScanner, HeaderScan, InstanceHeader, PixelData, scan_header};
use tessera_testkit::server::{TestServer, command, testdata};
use tessera_testkit::{Backend, Container, ServerBlobs};

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

fn header(bytes: &[u8]) -> InstanceHeader {
    match scan_header(bytes, true).unwrap() {
        HeaderScan::Complete(header) => *header,
        HeaderScan::NeedMore => unreachable!(),
    }
}

struct Sample {
    bytes: Vec<u8>,
    study: String,
    series: String,
    sop: String,
}

fn sample(name: &str) -> Sample {
    let bytes = std::fs::read(testdata().join(name)).unwrap();
    let id = header(&bytes).identifier().unwrap();
    Sample {
        study: id.study.to_string(),
        series: id.series.to_string(),
        sop: id.sop.to_string(),
        bytes,
    }
}

async fn put(blobs: &ServerBlobs, container: Container, name: &str, bytes: &[u8]) {
    blobs
        .replace(container, name, Bytes::copy_from_slice(bytes))
        .await;
}

fn new_stem(w: u64) -> String {
    format!("{}_{w}", hash_prefix(Watermark::new(w).unwrap()))
}

impl Sample {
    fn old_stem(&self, w: u64) -> String {
        format!("{}/{}/{}_{w}", self.study, self.series, self.sop)
    }

    fn metadata(&self) -> Vec<u8> {
        header(&self.bytes).metadata_json().unwrap()
    }

    fn path(&self) -> String {
        format!(
            "/studies/{}/series/{}/instances/{}",
            self.study, self.series, self.sop
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem() {
    an_original_container_is_adopted_served_and_migrated(Backend::FileSystem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite() {
    an_original_container_is_adopted_served_and_migrated(Backend::Azurite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3() {
    an_original_container_is_adopted_served_and_migrated(Backend::S3).await;
}

async fn an_original_container_is_adopted_served_and_migrated(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(blobs) = ServerBlobs::new(backend, dir.path()).await else {
        return;
    };

    // Old names with sparse watermarks, with and without metadata.
    let blue = sample("blue-circle.dcm");
    let green = sample("green-square.dcm");
    let red = sample("red-triangle.dcm");
    for (s, w, with_metadata) in [
        (&blue, 5, true),
        (&green, 17, true),
        (&red, 1_000_003, false),
    ] {
        put(
            &blobs,
            Container::Files,
            &format!("{}.dcm", s.old_stem(w)),
            &s.bytes,
        )
        .await;
        if with_metadata {
            put(
                &blobs,
                Container::Metadata,
                &format!("{}_metadata.json", s.old_stem(w)),
                &s.metadata(),
            )
            .await;
        }
    }
    // Dual names (a copy ran, or the store was Dual).
    let case1 = sample("case1_008.dcm");
    put(
        &blobs,
        Container::Files,
        &format!("{}.dcm", case1.old_stem(42)),
        &case1.bytes,
    )
    .await;
    put(
        &blobs,
        Container::Files,
        &format!("{}.dcm", new_stem(42)),
        &case1.bytes,
    )
    .await;
    put(
        &blobs,
        Container::Metadata,
        &format!("{}_metadata.json", case1.old_stem(42)),
        &case1.metadata(),
    )
    .await;
    put(
        &blobs,
        Container::Metadata,
        &format!("{}_metadata.json", new_stem(42)),
        &case1.metadata(),
    )
    .await;
    put(
        &blobs,
        Container::Files,
        &format!("{}.dcm", new_stem(17)),
        &green.bytes,
    )
    .await;
    put(
        &blobs,
        Container::Metadata,
        &format!("{}_metadata.json", new_stem(17)),
        &green.metadata(),
    )
    .await;
    // New names; frame ranges under the historical spaced name; metadata with a BOM.
    let layer1 = sample("layer1.dcm");
    put(
        &blobs,
        Container::Files,
        &format!("{}.dcm", new_stem(1000)),
        &layer1.bytes,
    )
    .await;
    put(
        &blobs,
        Container::Metadata,
        &format!("{}_metadata.json", new_stem(1000)),
        &layer1.metadata(),
    )
    .await;
    let Some(PixelData::Encapsulated { items_offset }) = header(&layer1.bytes).pixel_data() else {
        panic!()
    };
    let mut scanner = FragmentScanner::new(items_offset);
    scanner.feed(0, &layer1.bytes);
    let ranges = scanner.frame_ranges(1).unwrap();
    let first_fragment = Bytes::copy_from_slice(
        &layer1.bytes[ranges.0[0].offset as usize..][..ranges.0[0].length as usize],
    );
    put(
        &blobs,
        Container::Metadata,
        legacy_spaced_frame_ranges(Watermark::new(1000).unwrap()).as_ref(),
        &ranges.to_json(),
    )
    .await;
    let layer9 = sample("layer9.dcm");
    put(
        &blobs,
        Container::Files,
        &format!("{}.dcm", new_stem(2000)),
        &layer9.bytes,
    )
    .await;
    put(
        &blobs,
        Container::Metadata,
        &format!("{}_metadata.json", new_stem(2000)),
        &[b"\xEF\xBB\xBF".as_slice(), &layer9.metadata()].concat(),
    )
    .await;
    // One SOP instance under two watermarks.
    let xr = sample("XRJPEGProcess1.dcm");
    for w in [300, 301] {
        put(
            &blobs,
            Container::Files,
            &format!("{}.dcm", xr.old_stem(w)),
            &xr.bytes,
        )
        .await;
        put(
            &blobs,
            Container::Metadata,
            &format!("{}_metadata.json", xr.old_stem(w)),
            &xr.metadata(),
        )
        .await;
    }
    // Problems: not DICOM; UIDs in the name that disagree with the header.
    let not_dicom = "1.2.3/4.5.6/7.8.9_77.dcm";
    put(
        &blobs,
        Container::Files,
        not_dicom,
        b"this is not a DICOM file",
    )
    .await;
    let disagreeing = "1.2.3.4/5.6/7.8_88.dcm";
    let evle =
        std::fs::read(testdata().join("transfer-syntaxes/ExplicitVRLittleEndian.dcm")).unwrap();
    put(&blobs, Container::Files, disagreeing, &evle).await;
    let leftover = format!("{}.dcm", xr.old_stem(300));
    let mut before: Vec<(String, Bytes)> = Vec::new();
    for name in blobs.names(Container::Files).await {
        let bytes = blobs.read(Container::Files, &name).await;
        before.push((name, bytes));
    }
    let metadata_before = blobs.names(Container::Metadata).await;

    // A dry run counts and reports, and writes nothing.
    let env = blobs.env_with(&[("DicomServer__Services__BlobMigration__FormatType", "New")]);
    let dry = command(tessera(), dir.path(), &["adopt", "--dry-run"], &env)
        .output()
        .unwrap();
    let dry_text = String::from_utf8(dry.stdout).unwrap();
    assert!(dry.status.success(), "{dry_text}");
    assert!(
        dry_text.contains("would adopt 7 instances: old 3, new 2, dual 2"),
        "{dry_text}"
    );
    assert_eq!(
        blobs.names(Container::Metadata).await,
        metadata_before,
        "a dry run writes nothing"
    );

    let run = command(tessera(), dir.path(), &["adopt"], &env)
        .output()
        .unwrap();
    let text = String::from_utf8(run.stdout).unwrap();
    assert!(run.status.success(), "{text}");
    assert!(
        text.contains("adopted 7 instances: old 3, new 2, dual 2"),
        "{text}"
    );
    assert!(text.contains("reported 3 blobs"), "{text}");
    let reported: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(reported.len(), 3, "{text}");
    for (reason, name) in [
        ("not-dicom", not_dicom),
        ("uids-disagree", disagreeing),
        ("leftover", leftover.as_str()),
    ] {
        assert!(
            reported
                .iter()
                .any(|l| l.contains(reason) && l.ends_with(name)),
            "{reason} {name} in {text}"
        );
    }
    for (name, bytes) in &before {
        assert!(
            blobs.read(Container::Files, name).await == *bytes,
            "{name} was modified"
        );
    }
    assert!(
        blobs
            .names(Container::Metadata)
            .await
            .contains(&format!("{}_metadata.json", new_stem(1_000_003))),
        "missing metadata written under the New name"
    );

    // A second run finds everything indexed and reads no blob again.
    let again = command(tessera(), dir.path(), &["adopt"], &env)
        .output()
        .unwrap();
    let again_text = String::from_utf8(again.stdout).unwrap();
    assert!(again.status.success(), "{again_text}");
    assert!(
        again_text.contains("adopted 0 instances: old 0, new 0, dual 0; already indexed 7"),
        "{again_text}"
    );

    // Served: every live instance byte for byte, metadata, frames.
    let live = [
        (&blue, 5),
        (&green, 17),
        (&red, 1_000_003),
        (&case1, 42),
        (&layer1, 1000),
        (&layer9, 2000),
        (&xr, 301),
    ];
    let server = TestServer::start(tessera(), dir.path(), &env);
    let client = reqwest::Client::new();
    for (s, _) in &live {
        let response = client
            .get(server.url(&format!("/v2{}", s.path())))
            .header("Accept", "application/dicom")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", s.sop);
        assert!(
            response.bytes().await.unwrap() == s.bytes.as_slice(),
            "{} differs",
            s.sop
        );
        let json: Value = server.get_json(&format!("/v2{}/metadata", s.path())).await;
        assert_eq!(json[0]["00080018"]["Value"][0], s.sop.as_str());
    }
    // Search finds every live instance at every level, and the leftover watermark only once.
    for (s, _) in &live {
        for (path, tag, uid) in [
            (
                format!("/v2/studies?StudyInstanceUID={}", s.study),
                "0020000D",
                &s.study,
            ),
            (
                format!("/v2/series?SeriesInstanceUID={}", s.series),
                "0020000E",
                &s.series,
            ),
            (
                format!("/v2/instances?SOPInstanceUID={}", s.sop),
                "00080018",
                &s.sop,
            ),
        ] {
            let found: Value = server.get_json(&path).await;
            let found = found.as_array().unwrap();
            assert_eq!(found.len(), 1, "{path}: {found:?}");
            assert_eq!(found[0][tag]["Value"][0], uid.as_str());
        }
    }
    let studies: Value = server.get_json("/v2/studies").await;
    let distinct: std::collections::BTreeSet<&str> =
        live.iter().map(|(s, _)| s.study.as_str()).collect();
    assert_eq!(studies.as_array().unwrap().len(), distinct.len());
    let instances: Value = server.get_json("/v2/instances").await;
    assert_eq!(instances.as_array().unwrap().len(), live.len());
    let operation: Value = server
        .get_json("/v2/operations/7e55e7a0ad0b4c0f9d6e0a0b7a5d0001")
        .await;
    assert_eq!(
        (operation["type"].as_str(), operation["status"].as_str()),
        (Some("adopt"), Some("succeeded")),
        "{operation}"
    );
    assert_eq!(
        operation["results"]["processed"].as_u64(),
        Some(before.len() as u64),
        "{operation}"
    );
    let frame = client
        .get(server.url(&format!("/v2{}/frames/1", layer1.path())))
        .header("Accept", "application/octet-stream; transfer-syntax=*")
        .send()
        .await
        .unwrap();
    assert_eq!(frame.status(), 200);
    assert_eq!(frame.bytes().await.unwrap(), first_fragment);
    server.kill();

    // The documented migration: Dual + copy, then New + delete-old.
    for (format, flag, id) in [
        (
            "Dual",
            "DicomServer__Services__BlobMigration__StartCopy",
            "1d4689daca3b4659b0c77bf6c9ff25e1",
        ),
        (
            "New",
            "DicomServer__Services__BlobMigration__StartDelete",
            "ce38a27eb1944645b47afe91c38c330f",
        ),
    ] {
        let env = blobs.env_with(&[
            ("DicomServer__Services__BlobMigration__FormatType", format),
            (flag, "true"),
        ]);
        let server = TestServer::start(tessera(), dir.path(), &env);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body: Value = server.get_json(&format!("/v2/operations/{id}")).await;
            if body["status"] == "succeeded" {
                break;
            }
            assert_ne!(body["status"], "failed", "{body}");
            assert!(Instant::now() < deadline, "{format}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server.kill();
    }
    let names = blobs.names(Container::Files).await;
    for (s, w) in &live {
        assert!(
            names.contains(&format!("{}.dcm", new_stem(*w))),
            "{} has its New name",
            s.sop
        );
        assert!(
            !names.contains(&format!("{}.dcm", s.old_stem(*w))),
            "{} lost its Old name",
            s.sop
        );
        assert!(
            blobs
                .read(Container::Files, &format!("{}.dcm", new_stem(*w)))
                .await
                == s.bytes
        );
    }
    for problem in [not_dicom, disagreeing, leftover.as_str()] {
        assert!(
            names.contains(&problem.to_owned()),
            "{problem} is left alone"
        );
    }
}
