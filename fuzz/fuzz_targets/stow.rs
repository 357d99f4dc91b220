//! STOW in-process: a request body (and its Content-Type, boundary included) through the HTTP
//! router to a response.
//!
//! Input: `[flags, content-type line \n, body…]`. Flags: bit 0 v1/v2, bit 1 `/studies` or
//! `/studies/{study}`, bits 2..=4 how the body is chunked, bit 5 no Content-Type at all. The
//! status must be one a client can act on; what was stored is read back, then deleted.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{app, chunks, retrieve_paths};

/// A study UID the colour-shape samples share, so `/studies/{study}` can match.
const STUDY: &str = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420";

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (content_type, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let version = if flags & 1 == 0 { "v1" } else { "v2" };
    let path = if flags & 2 == 0 {
        format!("/{version}/studies")
    } else {
        format!("/{version}/studies/{STUDY}")
    };
    let pieces: Vec<Result<Bytes, std::io::Error>> = chunks(body, (flags >> 2) & 7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut request = Request::post(path.as_str()).header("accept", "application/dicom+json");
    if flags & 0x20 == 0
        && let Ok(value) = HeaderValue::from_bytes(content_type)
    {
        request = request.header("content-type", value);
    }
    let request = request
        .body(Body::from_stream(futures::stream::iter(pieces)))
        .expect("fuzz: STOW request");

    let app = app();
    app.runtime.block_on(async {
        let answer = app.send(request).await;
        let expected = [
            StatusCode::OK,
            StatusCode::ACCEPTED,
            StatusCode::NO_CONTENT,
            StatusCode::BAD_REQUEST,
            StatusCode::CONFLICT,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ];
        assert!(
            expected.contains(&answer.status),
            "STOW answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        // What was acknowledged can be read back (metadata, and the first frame when it has
        // frames) without a server error.
        for instance in retrieve_paths(&answer.body) {
            for (path, accept) in [
                (format!("{instance}/metadata"), "application/dicom+json"),
                (format!("{instance}/frames/1"), "*/*"),
                (instance.clone(), "*/*"),
            ] {
                let request = Request::get(path.as_str())
                    .header("accept", accept)
                    .body(Body::empty())
                    .expect("fuzz: GET request");
                let read = app.send(request).await;
                assert!(
                    !read.status.is_server_error(),
                    "GET {path} of a stored instance answered {}: {}",
                    read.status,
                    String::from_utf8_lossy(&read.body)
                );
            }
        }
        app.remove_stored(&answer.body).await;
    });
});
