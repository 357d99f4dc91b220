//! QIDO query parsing in-process: a query string through the HTTP router (`tessera_core`'s
//! query model, the parser in `tessera_http::qido`, the index search) to a response, against an
//! index that holds the sample instances.
//!
//! Input: `[route, query…]`. The route byte picks the version and one of the six QIDO paths;
//! the query bytes are sent as the query string (bytes a URI cannot carry percent-encoded).
#![no_main]

use std::fmt::Write;
use std::sync::Once;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{app, sample_files};

const STUDY: &str = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420";
const SERIES: &str = "1.2.826.0.1.3680043.8.498.45787841905473114233124723359129632652";

static SAMPLES: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    let Some((&route, query)) = data.split_first() else {
        return;
    };
    let app = app();
    SAMPLES.call_once(|| {
        app.runtime.block_on(async {
            for file in sample_files() {
                let request = Request::post("/v2/studies")
                    .header("content-type", "application/dicom")
                    .body(Body::from(file))
                    .expect("fuzz: sample STOW");
                app.send(request).await;
            }
        })
    });
    let version = if route & 1 == 0 { "v1" } else { "v2" };
    let resource = match (route >> 1) % 6 {
        0 => "studies".to_owned(),
        1 => "series".to_owned(),
        2 => "instances".to_owned(),
        3 => format!("studies/{STUDY}/series"),
        4 => format!("studies/{STUDY}/instances"),
        _ => format!("studies/{STUDY}/series/{SERIES}/instances"),
    };
    let mut uri = format!("/{version}/{resource}?");
    for &byte in query {
        if byte.is_ascii_alphanumeric() || b"&=%+-_.*?,\\^:~!$'()/;@".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            let _ = write!(uri, "%{byte:02X}");
        }
    }
    let Ok(request) = Request::get(uri.as_str()).body(Body::empty()) else {
        return;
    };
    let answer = app.runtime.block_on(app.send(request));
    assert!(
        [
            StatusCode::OK,
            StatusCode::NO_CONTENT,
            StatusCode::BAD_REQUEST
        ]
        .contains(&answer.status),
        "GET {uri} answered {}: {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
});
