//! Hostile input against a real server: each case of issue 10 and each limit of
//! `Tessera:Limits`. Every case asserts the status and failure code, that the server is still
//! up, that its peak RSS grew by less than 64 MB, and (for the stores) that nothing was stored.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tessera_testkit::server::{TestServer, files_under, testdata};
use tessera_testkit::synthetic::Synthetic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1024 * 1024;
const RSS_BUDGET_KIB: u64 = 64 * 1024;

fn start(dir: &Path) -> TestServer {
    TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_tessera")),
        dir,
        &[
            ("Tessera__Limits__RequestHeaderTimeout", "00:00:02"),
            ("Tessera__Limits__BodyReadTimeout", "00:00:02"),
            ("Tessera__Limits__KeepAliveTimeout", "00:00:02"),
            ("Tessera__Limits__MaxConcurrentUploads", "3"),
            ("Tessera__Limits__MaxParts", "50"),
            (
                "Tessera__Limits__MaxRequestBodyBytes",
                &(256 * MIB).to_string(),
            ),
            ("Tessera__Limits__MaxFramesPerRequest", "16"),
        ],
    )
}

/// A raw HTTP/1.1 exchange: `head` and then the `body` chunks are written while the response
/// is read, so an early answer (the server stops reading) is still seen. Returns the status and
/// the response body; status 0 when the server closed without answering.
async fn exchange(
    server: &TestServer,
    head: String,
    body: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (u16, String) {
    let stream = TcpStream::connect(&server.address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut response)).await;
    if !matches!(read, Ok(Ok(_))) {
        println!(
            "reading the response ended with {read:?} after {} bytes",
            response.len()
        );
    }
    writing.abort();
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn stow_head(server: &TestServer, content_type: &str, length: Option<u64>) -> String {
    let length = match length {
        Some(n) => format!("Content-Length: {n}\r\n"),
        None => "Transfer-Encoding: chunked\r\n".to_owned(),
    };
    format!(
        "POST /v2/studies HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nAccept: application/dicom+json\r\n{length}Connection: close\r\n\r\n",
        server.address
    )
}

const MULTIPART: &str = "multipart/related; type=\"application/dicom\"; boundary=hostile";

/// Frames `chunks` in chunked transfer coding.
fn chunked(chunks: impl Iterator<Item = Vec<u8>>) -> impl Iterator<Item = Vec<u8>> {
    chunks
        .map(|c| {
            let mut out = format!("{:x}\r\n", c.len()).into_bytes();
            out.extend_from_slice(&c);
            out.extend_from_slice(b"\r\n");
            out
        })
        .chain(std::iter::once(b"0\r\n\r\n".to_vec()))
}

fn one_part(instance: &[u8]) -> Vec<u8> {
    let mut body = b"--hostile\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
    body.extend_from_slice(instance);
    body.extend_from_slice(b"\r\n--hostile--\r\n");
    body
}

/// A synthetic instance's header without its Pixel Data element header (12 bytes).
fn header_without_pixels(synthetic: &Synthetic) -> Vec<u8> {
    let mut header = synthetic.header();
    header.truncate(header.len() - 12);
    header
}

fn element(tag: (u16, u16), vr: &[u8; 2], length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&length.to_le_bytes());
    out
}

fn delimiter(tag: (u16, u16), length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out
}

fn log_tail(server: &TestServer) -> String {
    let log = server.log.lock().map(|l| l.clone()).unwrap_or_default();
    log[log.len().saturating_sub(30)..].join("\n")
}

fn failure_codes(body: &str) -> Vec<u64> {
    let dataset: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    dataset["00081198"]["Value"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["00081197"]["Value"][0].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

fn comments(body: &str) -> String {
    let dataset: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    dataset["00081198"].to_string()
}

/// Checks what every case checks: the server is up and answers, and its peak RSS stayed
/// within budget of `baseline`.
async fn still_healthy(server: &mut TestServer, baseline: u64, case: &str) {
    assert!(server.is_running(), "{case}: the server died");
    let health = reqwest::get(server.url("/health/check")).await;
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "{case}: health check"
    );
    let grown = server.peak_rss_kib().saturating_sub(baseline);
    println!("{case}: peak RSS grew by {grown} KiB");
    assert!(
        grown < RSS_BUDGET_KIB,
        "{case}: peak RSS grew by {grown} KiB"
    );
}

async fn nothing_stored(server: &TestServer, dir: &Path, case: &str) {
    let found = reqwest::get(server.url("/v2/instances")).await.unwrap();
    assert_eq!(found.status().as_u16(), 204, "{case}: QIDO found instances");
    let blobs: Vec<String> = files_under(&dir.join("data/blobs"))
        .into_iter()
        .filter(|f| !f.starts_with("tessera-staging"))
        .collect();
    assert!(blobs.is_empty(), "{case}: blobs left: {blobs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_stores_fail_cleanly_store_nothing_and_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    // Warm up allocator pools and the index with a refused store and a query.
    let _ = exchange(
        &server,
        stow_head(&server, "application/dicom", Some(4)),
        std::iter::once(b"junk".to_vec()),
    )
    .await;
    let _ = reqwest::get(server.url("/v2/instances")).await;
    let baseline = server.peak_rss_kib();

    let synthetic = Synthetic::new(
        "1.2.826.0.1.3680043.10.1.1",
        "1.2.826.0.1.3680043.10.1.2",
        "1.2.826.0.1.3680043.10.1.3",
    );

    // Sequences nested 2,000 deep (the stack overflow).
    let mut deep = header_without_pixels(&synthetic);
    for _ in 0..2000 {
        deep.extend(element((0x0040, 0xA730), b"SQ", u32::MAX));
        deep.extend(delimiter((0xFFFE, 0xE000), u32::MAX));
    }
    for _ in 0..2000 {
        deep.extend(delimiter((0xFFFE, 0xE00D), 0));
        deep.extend(delimiter((0xFFFE, 0xE0DD), 0));
    }
    // One element declaring 0xFFFFFFF0 bytes in a 1 KB upload.
    let mut huge = header_without_pixels(&synthetic);
    huge.extend(element((0x0009, 0x1010), b"OB", 0xFFFF_FFF0));
    huge.extend(vec![0u8; 1024]);
    // NumberOfFrames far beyond the pixel data it brings.
    let crafted_frames = Synthetic {
        frames: 99_999_999,
        rows: 1,
        columns: 1,
        ..synthetic.clone()
    };
    let mut frames_bomb = crafted_frames.header();
    let at = frames_bomb.len() - 4;
    frames_bomb[at..].copy_from_slice(&16u32.to_le_bytes());
    frames_bomb.extend(vec![7u8; 16]);
    // A deflated data set that inflates to 256 MiB.
    let deflated = deflate_bomb(&synthetic, 256 * MIB);
    assert!(
        deflated.len() < 2 * MIB as usize,
        "the bomb is small: {}",
        deflated.len()
    );

    let whole = Synthetic {
        rows: 64,
        columns: 64,
        frames: 4,
        ..synthetic.clone()
    }
    .bytes();
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        ("nesting 2,000 deep".into(), deep, "MaxSequenceDepth"),
        ("a 4 GB declared length".into(), huge, "MaxHeaderBytes"),
        (
            "NumberOfFrames beyond the pixel data".into(),
            frames_bomb,
            "NumberOfFrames",
        ),
        ("a deflate bomb".into(), deflated, "MaxInflatedBytes"),
    ];
    for percent in [10, 50, 99] {
        let cut = whole.len() * percent / 100;
        cases.push((
            format!("an instance cut at {percent}%"),
            whole[..cut].to_vec(),
            "truncated",
        ));
    }
    let sample = std::fs::read(testdata().join("layer1.dcm")).unwrap();
    cases.push((
        "an encapsulated sample cut at 99%".into(),
        sample[..sample.len() * 99 / 100].to_vec(),
        "truncated",
    ));

    for (case, instance, expected) in cases {
        for multipart in [false, true] {
            let case = format!(
                "{case} ({})",
                if multipart { "multipart" } else { "single" }
            );
            let (content_type, body) = if multipart {
                (MULTIPART, one_part(&instance))
            } else {
                ("application/dicom", instance.clone())
            };
            let head = stow_head(&server, content_type, Some(body.len() as u64));
            let (status, response) = exchange(&server, head, std::iter::once(body)).await;
            assert_eq!(
                status,
                409,
                "{case}: {response}; server log: {}",
                log_tail(&server)
            );
            assert_eq!(failure_codes(&response), vec![43264], "{case}: {response}");
            assert!(comments(&response).contains(expected), "{case}: {response}");
            still_healthy(&mut server, baseline, &case).await;
            nothing_stored(&server, dir.path(), &case).await;
        }
    }

    // Request-level limits: the multipart structure and the body size.
    let mut many = Vec::new();
    for _ in 0..60 {
        many.extend_from_slice(
            b"--hostile\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n",
        );
    }
    many.extend_from_slice(b"--hostile--\r\n");
    let mut oversized = synthetic.header();
    oversized.truncate(oversized.len() - 4);
    oversized.extend_from_slice(&u32::MAX.wrapping_sub(1).to_le_bytes());
    let megabytes = |count: usize, byte: u8| (0..count).map(move |_| vec![byte; MIB as usize]);
    let request_cases: Vec<RequestCase> = vec![
        (
            "200 MB without a boundary",
            MULTIPART,
            None,
            Box::new(chunked(megabytes(200, b'x'))),
            400,
            "MaxPreambleBytes",
        ),
        (
            "a 150 MB part header",
            MULTIPART,
            None,
            Box::new(chunked(
                std::iter::once(b"--hostile\r\nX-Padding: ".to_vec()).chain(megabytes(150, b'y')),
            )),
            400,
            "MaxPartHeaderBytes",
        ),
        (
            "60 parts",
            MULTIPART,
            Some(many.len() as u64),
            Box::new(std::iter::once(many)),
            400,
            "MaxParts",
        ),
        (
            "a declared 100 GB body",
            "application/dicom",
            Some(100 << 30),
            Box::new(std::iter::empty()),
            413,
            "MaxRequestBodyBytes",
        ),
        (
            "a 300 MB chunked body",
            "application/dicom",
            None,
            Box::new(chunked(std::iter::once(oversized).chain(megabytes(300, 0)))),
            413,
            "MaxRequestBodyBytes",
        ),
    ];
    for (case, content_type, length, body, expected, key) in request_cases {
        let (status, response) =
            exchange(&server, stow_head(&server, content_type, length), body).await;
        assert_eq!(status, expected, "{case}: {response}");
        assert!(response.contains(key), "{case}: {response}");
        still_healthy(&mut server, baseline, case).await;
        nothing_stored(&server, dir.path(), case).await;
    }
}

/// A request body produced lazily, chunk by chunk.
type Body = Box<dyn Iterator<Item = Vec<u8>> + Send>;
/// A request-level case: name, content type, declared length, body, status, the key named.
type RequestCase = (
    &'static str,
    &'static str,
    Option<u64>,
    Body,
    u16,
    &'static str,
);

/// Raw deflate of a data set whose one OB element is `size` zero bytes.
fn deflate_bomb(synthetic: &Synthetic, size: u64) -> Vec<u8> {
    use dicom_object::meta::FileMetaTableBuilder;
    let plain = header_without_pixels(synthetic);
    // The data set of the plain instance starts after its file meta information.
    let meta_end = 132 + 12 + u32::from_le_bytes(plain[140..144].try_into().unwrap()) as usize;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.7")
        .media_storage_sop_instance_uid(synthetic.sop.as_str())
        .transfer_syntax("1.2.840.10008.1.2.1.99")
        .implementation_class_uid("1.2.826.0.1.3680043.10.1234")
        .build()
        .unwrap();
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).unwrap();
    let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::fast());
    encoder.write_all(&plain[meta_end..]).unwrap();
    encoder
        .write_all(&element((0x0009, 0x1010), b"OB", size as u32))
        .unwrap();
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        encoder.write_all(&zeros).unwrap();
    }
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frames_queries_timeouts_and_uploads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let _ = reqwest::get(server.url("/v2/instances")).await;

    // A multi-frame instance of 2.9 MB frames.
    let multi = Synthetic {
        rows: 1700,
        columns: 1700,
        frames: 20,
        ..Synthetic::new(
            "1.2.826.0.1.3680043.10.2.1",
            "1.2.826.0.1.3680043.10.2.2",
            "1.2.826.0.1.3680043.10.2.3",
        )
    };
    let (status, _) = server.stow("/v2/studies", &[multi.bytes()]).await;
    assert_eq!(status, 200);
    let baseline = server.peak_rss_kib();
    let path = format!(
        "/v2/studies/{}/series/{}/instances/{}/frames/",
        multi.study, multi.series, multi.sop
    );
    let client = reqwest::Client::new();
    let repeated = vec!["1"; 60].join(",");
    let response = client
        .get(server.url(&format!("{path}{repeated}")))
        .header(
            "Accept",
            "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.bytes().await.unwrap();
    assert!(
        body.len() < 2 * multi.frame_size() as usize,
        "repeats collapse: {} bytes",
        body.len()
    );
    let all: Vec<String> = (1..=16).map(|n| n.to_string()).collect();
    let response = client
        .get(server.url(&format!("{path}{}", all.join(","))))
        .header(
            "Accept",
            "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.unwrap().len() > 16 * multi.frame_size() as usize);
    still_healthy(&mut server, baseline, "frames").await;
    let too_many: Vec<String> = (1..=17).map(|n| n.to_string()).collect();
    let response = client
        .get(server.url(&format!("{path}{}", too_many.join(","))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("MaxFramesPerRequest")
    );

    // An instance without pixel data ends while its header is read: it stores, single and
    // multipart (found by the qido fuzz target: the body was polled again after its end).
    for (n, multipart) in [(5u8, false), (6, true)] {
        let plain = Synthetic::new(
            "1.2.826.0.1.3680043.10.5.1",
            "1.2.826.0.1.3680043.10.5.2",
            &format!("1.2.826.0.1.3680043.10.5.{n}"),
        );
        let instance = header_without_pixels(&plain);
        let (content_type, body) = if multipart {
            (MULTIPART, one_part(&instance))
        } else {
            ("application/dicom", instance)
        };
        let head = stow_head(&server, content_type, Some(body.len() as u64));
        let (status, response) = exchange(&server, head, std::iter::once(body)).await;
        assert_eq!(
            status, 200,
            "no pixel data, multipart {multipart}: {response}"
        );
    }

    // Queries: parameters, UID lists and fuzzy names.
    let filters = vec!["PatientID=x"; 1500].join("&");
    let uids: Vec<String> = (0..3_000).map(|n| format!("1.2.{n}")).collect();
    let words = vec!["word"; 1000].join("%20");
    for (case, query, limit) in [
        (
            "1,500 filters",
            format!("/v2/instances?{filters}"),
            "MaxQueryParameters",
        ),
        (
            "3,000 UIDs",
            format!("/v2/instances?SOPInstanceUID={}", uids.join(",")),
            "MaxUidListLength",
        ),
        (
            "1,000 fuzzy words",
            format!("/v2/studies?fuzzymatching=true&PatientName={words}"),
            "MaxFuzzyNameWords",
        ),
    ] {
        let started = Instant::now();
        let response = client.get(server.url(&query)).send().await.expect(case);
        assert_eq!(response.status().as_u16(), 400, "{case}");
        assert!(response.text().await.unwrap().contains(limit), "{case}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{case} took {:?}",
            started.elapsed()
        );
        still_healthy(&mut server, baseline, case).await;
    }

    // RetrieveURL does not reflect Host or X-Forwarded-Proto unless told to trust them.
    let other = Synthetic::new(
        "1.2.826.0.1.3680043.10.3.1",
        "1.2.826.0.1.3680043.10.3.2",
        "1.2.826.0.1.3680043.10.3.3",
    );
    let response = client
        .post(server.url("/v2/studies"))
        .header("Content-Type", "application/dicom")
        .header("Host", "evil.example")
        .header("X-Forwarded-Proto", "javascript")
        .body(other.bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("evil.example") && !text.contains("javascript"),
        "{text}"
    );
    assert!(
        text.contains(&format!("http://{}/v2/studies/", server.address)),
        "{text}"
    );

    // Headers that never end, and idle keep-alive connections, are closed.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&server.address).await.unwrap());
    }
    let mut slow = TcpStream::connect(&server.address).await.unwrap();
    slow.write_all(b"GET /v2/instances HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for mut connection in idle.into_iter().chain(std::iter::once(slow)) {
        let mut buffer = [0u8; 1024];
        let read =
            tokio::time::timeout(Duration::from_secs(15), connection.read(&mut buffer)).await;
        assert!(read.is_ok(), "a connection was held open");
    }
    println!(
        "201 idle or slow connections closed in {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // A stalled STOW times out and frees its SOP instance; so does one whose client hangs up.
    for hang_up in [false, true] {
        let stalled = Synthetic {
            rows: 512,
            columns: 512,
            ..Synthetic::new(
                "1.2.826.0.1.3680043.10.4.1",
                "1.2.826.0.1.3680043.10.4.2",
                &format!("1.2.826.0.1.3680043.10.4.{}", u8::from(hang_up) + 3),
            )
        };
        let bytes = stalled.bytes();
        let mut connection = TcpStream::connect(&server.address).await.unwrap();
        let head = stow_head(&server, "application/dicom", Some(bytes.len() as u64));
        connection.write_all(head.as_bytes()).await.unwrap();
        connection
            .write_all(&bytes[..bytes.len() / 2])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        if hang_up {
            drop(connection);
        } else {
            let mut response = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                connection.read_to_end(&mut response),
            )
            .await;
            let (status, _) = parse_response(&response);
            assert_eq!(status, 408, "a stalled body answers 408");
        }
        let mut stored = false;
        while started.elapsed() < Duration::from_secs(5) {
            let (status, _) = server
                .stow("/v2/studies", std::slice::from_ref(&bytes))
                .await;
            if status == 200 {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            stored,
            "the SOP instance of a {} STOW could be stored again",
            if hang_up { "hung-up" } else { "stalled" }
        );
        println!(
            "re-stored after {:?} (hang up: {hang_up})",
            started.elapsed()
        );
    }

    // Concurrent uploads beyond the limit answer 503 with Retry-After.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut connection = TcpStream::connect(&server.address).await.unwrap();
        connection
            .write_all(stow_head(&server, "application/dicom", Some(1000)).as_bytes())
            .await
            .unwrap();
        connection.write_all(&[0u8; 10]).await.unwrap();
        held.push(connection);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client
        .post(server.url("/v2/studies"))
        .header("Content-Type", "application/dicom")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("MaxConcurrentUploads")
    );
    drop(held);
    still_healthy(&mut server, baseline, "uploads").await;
}
