//! What web viewers need from a real server process: CORS (`DicomServer:Cors:*`), compressed
//! metadata, BulkDataURIs, rendered images and transcoding.

use std::path::Path;

use tessera_testkit::oidc::{TestAuthority, TestKey};
use tessera_testkit::server::TestServer;

const VIEWER: &str = "http://viewer.example:3000";

fn start(dir: &Path, env: &[(&str, &str)]) -> TestServer {
    TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir, env)
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A preflight is answered without a token even when security is on, allows the headers a
/// DICOMweb client sends, and simple requests carry the allowed origin and exposed headers.
#[tokio::test]
async fn cors_preflight_and_simple_request() {
    let dir = tempfile::tempdir().unwrap();
    let authority = TestAuthority::start(&[TestKey::rsa()]);
    let server = start(
        dir.path(),
        &[
            ("DicomServer__Cors__Origins__0", VIEWER),
            ("DicomServer__Cors__MaxAge", "600"),
            ("DicomServer__Security__Enabled", "true"),
            (
                "DicomServer__Security__Authentication__Authority",
                &authority.url,
            ),
            ("DicomServer__Security__Authentication__Audience", "viewer"),
        ],
    );
    let client = reqwest::Client::new();
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "accept,authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status().as_u16(), 200);
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(VIEWER)
    );
    let allowed = header(&preflight, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["accept", "authorization", "content-type"] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }
    let methods = header(&preflight, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("DELETE"),
        "{methods}"
    );
    assert_eq!(
        header(&preflight, "access-control-max-age").as_deref(),
        Some("600")
    );

    // A simple request without a token is refused, and the browser may read why.
    let refused = client
        .get(server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin").as_deref(),
        Some(VIEWER)
    );
    let exposed = header(&refused, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    for name in ["etag", "location", "content-type"] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }

    // Another origin gets no CORS headers.
    let foreign = client
        .get(server.url("/health/check"))
        .header("Origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&foreign, "access-control-allow-origin"), None);
}

/// Without `DicomServer:Cors:Origins` there are no CORS headers at all.
#[tokio::test]
async fn cors_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let response = reqwest::Client::new()
        .get(server.url("/v2/studies"))
        .header("Origin", VIEWER)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(tessera_testkit::server::testdata().join(name)).unwrap()
}

/// The study of blue-circle, green-square and red-triangle.
const STUDY: &str = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420";

/// Metadata is gzip-compressed when the client accepts it, and the same JSON otherwise.
#[tokio::test]
async fn metadata_is_gzipped_when_accepted() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let parts = ["blue-circle.dcm", "green-square.dcm", "red-triangle.dcm"].map(sample);
    assert_eq!(server.stow("/v2/studies", &parts).await.0, 200);
    let client = reqwest::Client::new();
    let url = server.url(&format!("/v2/studies/{STUDY}/metadata"));
    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), None);
    let plain: serde_json::Value = plain.json().await.unwrap();
    assert_eq!(plain.as_array().unwrap().len(), 3);
    let gzipped = client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status().as_u16(), 200);
    assert_eq!(
        header(&gzipped, "content-encoding").as_deref(),
        Some("gzip")
    );
    let compressed = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    let unzipped: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(unzipped, plain);
}

const MR: &str = "case1_008.dcm";
const XR: &str = "XRJPEGProcess1.dcm";

/// The path of a stored sample's instance.
fn instance_path(bytes: &[u8]) -> String {
    let object = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .unwrap();
    let text = |tag| {
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
    format!(
        "/v2/studies/{}/series/{}/instances/{}",
        text(tags::STUDY_INSTANCE_UID),
        text(tags::SERIES_INSTANCE_UID),
        text(tags::SOP_INSTANCE_UID)
    )
}

async fn get(
    server: &TestServer,
    path: &str,
    accept: Option<&str>,
) -> (u16, Option<String>, bytes::Bytes) {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = header(&response, "content-type");
    (status, content_type, response.bytes().await.unwrap())
}

fn decode_image(bytes: &[u8], format: image::ImageFormat) -> image::DynamicImage {
    image::load_from_memory_with_format(bytes, format).unwrap()
}

/// Rendered and thumbnail resources are decodable JPEG or PNG images of the right size.
#[tokio::test]
async fn rendered_and_thumbnails() {
    use image::GenericImageView;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let (mr, xr, blue) = (sample(MR), sample(XR), sample("blue-circle.dcm"));
    let parts = [mr.clone(), xr.clone(), blue.clone()];
    // 202: the MR, in Implicit VR Little Endian, is stored with a warning.
    assert!(matches!(
        server.stow("/v2/studies", &parts).await.0,
        200 | 202
    ));
    let (mr, xr, blue) = (instance_path(&mr), instance_path(&xr), instance_path(&blue));

    // The MR (16-bit, Implicit VR LE), JPEG by default, at its own size.
    let (status, kind, body) = get(&server, &format!("{mr}/rendered"), None).await;
    assert_eq!(status, 200);
    assert_eq!(kind.as_deref(), Some("image/jpeg"));
    assert_eq!(
        decode_image(&body, image::ImageFormat::Jpeg).dimensions(),
        (512, 512)
    );
    // PNG into a viewport, with a window.
    let (status, kind, body) = get(
        &server,
        &format!("{mr}/frames/1/rendered?viewport=128,128&window=600,1200,linear"),
        Some("image/png"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(kind.as_deref(), Some("image/png"));
    assert_eq!(
        decode_image(&body, image::ImageFormat::Png).dimensions(),
        (128, 128)
    );
    // The JPEG-baseline XR, re-encoded at quality 50.
    let (status, _, body) = get(&server, &format!("{xr}/rendered?quality=50"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        decode_image(&body, image::ImageFormat::Jpeg).dimensions(),
        (1024, 1024)
    );
    // The RGB blue circle (985 columns × 979 rows): a series thumbnail fits 128 × 128.
    let series = blue.split("/instances/").next().unwrap();
    let (status, _, body) = get(&server, &format!("{series}/thumbnail"), None).await;
    assert_eq!(status, 200);
    let thumbnail = decode_image(&body, image::ImageFormat::Jpeg);
    assert_eq!(thumbnail.width(), 128);
    assert!((126..=128).contains(&thumbnail.height()));
    // Instance and study thumbnails, and a series rendered as one part per instance.
    for path in [
        format!("{xr}/thumbnail"),
        format!("/v2/studies/{STUDY}/thumbnail"),
    ] {
        let (status, _, body) = get(&server, &path, None).await;
        assert_eq!(status, 200, "{path}");
        decode_image(&body, image::ImageFormat::Jpeg);
    }
    // OHIF asks for thumbnails with an `accept` query parameter.
    let (status, kind, body) = get(
        &server,
        &format!("{xr}/thumbnail?accept=image%2Fpng"),
        Some("application/json"),
    )
    .await;
    assert_eq!((status, kind.as_deref()), (200, Some("image/png")));
    decode_image(&body, image::ImageFormat::Png);
    let (status, kind, _) = get(&server, &format!("{series}/rendered"), None).await;
    assert_eq!(status, 200);
    assert!(kind.unwrap().starts_with("multipart/related"));

    // What cannot be answered.
    let cases = [
        (format!("{mr}/frames/2/rendered"), None, 404),
        (format!("{mr}/rendered"), Some("application/dicom"), 406),
        (format!("{mr}/rendered?quality=0"), None, 400),
        (format!("{mr}/rendered?window=1,0"), None, 400),
        (format!("{mr}/rendered?viewport=0,5"), None, 400),
    ];
    for (path, accept, expected) in cases {
        assert_eq!(get(&server, &path, accept).await.0, expected, "{path}");
    }
}

/// An instance whose decoded pixels exceed Tessera:Limits:MaxDecodeBytes is refused, not
/// decoded.
#[tokio::test]
async fn rendering_is_refused_past_the_decode_limit() {
    let dir = tempfile::tempdir().unwrap();
    // The XR's file is about 100 kB (under the limit); its pixels take 1 MiB (over it).
    let server = start(dir.path(), &[("Tessera__Limits__MaxDecodeBytes", "500000")]);
    let xr = sample(XR);
    assert!(xr.len() < 500_000);
    assert_eq!(
        server
            .stow("/v2/studies", std::slice::from_ref(&xr))
            .await
            .0,
        200
    );
    let (status, _, body) = get(&server, &format!("{}/rendered", instance_path(&xr)), None).await;
    assert_eq!(status, 406);
    assert!(
        String::from_utf8_lossy(&body).contains("MaxDecodeBytes"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// The native pixel samples of a Part-10 instance.
fn pixels(bytes: &[u8]) -> (String, Vec<u8>) {
    use dicom_dictionary_std::tags;
    let object = dicom_object::OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .unwrap();
    let data = object
        .element(tags::PIXEL_DATA)
        .unwrap()
        .to_bytes()
        .unwrap()
        .into_owned();
    (
        object
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_owned(),
        data,
    )
}

const EXPLICIT: &str = "1.2.840.10008.1.2.1";

/// A JPEG-baseline and an RLE instance, retrieved (whole, and frame 1) as Explicit VR Little
/// Endian, decode to the uncompressed original's pixels: exactly for RLE, within the codec's
/// tolerance for JPEG.
#[tokio::test]
async fn transcoding_to_explicit_vr_little_endian() {
    let (_, original) = pixels(&sample("transfer-syntaxes/ExplicitVRLittleEndian.dcm"));
    for (name, tolerance) in [("RLELossless.dcm", 0.0), ("JPEGProcess1.dcm", 8.0)] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path(), &[]);
        let stored = sample(&format!("transfer-syntaxes/{name}"));
        assert_eq!(
            server
                .stow("/v2/studies", std::slice::from_ref(&stored))
                .await
                .0,
            200
        );
        let path = instance_path(&stored);
        let (status, kind, body) = get(
            &server,
            &path,
            Some(&format!("application/dicom; transfer-syntax={EXPLICIT}")),
        )
        .await;
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&body));
        assert_eq!(
            kind.as_deref(),
            Some(format!("application/dicom; transfer-syntax={EXPLICIT}").as_str())
        );
        assert_eq!(&body[128..132], b"DICM", "{name}: one preamble, then DICM");
        let transcoded = dicom_object::OpenFileOptions::new()
            .from_reader(&body[128..])
            .unwrap();
        let photometric = transcoded
            .element(dicom_dictionary_std::tags::PHOTOMETRIC_INTERPRETATION)
            .unwrap()
            .to_str()
            .unwrap()
            .trim()
            .to_owned();
        assert_eq!(photometric, "RGB", "{name}: decoded samples are RGB");
        let (syntax, whole) = pixels(&body);
        assert_eq!(syntax, EXPLICIT);
        let (status, _, frame) = get(
            &server,
            &format!("{path}/frames/1"),
            Some(&format!(
                "application/octet-stream; transfer-syntax={EXPLICIT}"
            )),
        )
        .await;
        assert_eq!(status, 200, "{name}");
        for decoded in [&whole[..], &frame[..]] {
            assert_eq!(decoded.len(), original.len(), "{name}");
            let mean_error = decoded
                .iter()
                .zip(&original)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / original.len() as f64;
            assert!(mean_error <= tolerance, "{name}: mean error {mean_error}");
        }
        // No JPEG 2000 encoder is kept, so that target is not acceptable.
        let (status, _, _) = get(
            &server,
            &path,
            Some("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"),
        )
        .await;
        assert_eq!(status, 406, "{name}");
    }
}

/// An encapsulated PDF's document, left out of the stored metadata, is announced by a
/// BulkDataURI under the configured public base URL and served byte for byte.
#[tokio::test]
async fn encapsulated_document_bulk_data_uri() {
    use dicom_dictionary_std::tags;
    use dicom_object::mem::InMemElement;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    const PDF_CLASS: &str = "1.2.840.10008.5.1.4.1.1.104.1";
    const SOP: &str = "1.2.826.0.1.3680043.10.88.1.1";
    const STUDY_UID: &str = "1.2.826.0.1.3680043.10.88";
    const SERIES_UID: &str = "1.2.826.0.1.3680043.10.88.1";
    let document: Vec<u8> = b"%PDF-1.4\n"
        .iter()
        .copied()
        .chain((0..20_000u32).map(|i| (i * 7 % 251) as u8))
        .collect();
    let mut object = InMemDicomObject::new_empty();
    use dicom_core::{PrimitiveValue, VR};
    use dicom_dictionary_std::tags as t;
    for (tag, vr, value) in [
        (t::SOP_CLASS_UID, VR::UI, PDF_CLASS),
        (t::SOP_INSTANCE_UID, VR::UI, SOP),
        (t::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        (t::SERIES_INSTANCE_UID, VR::UI, SERIES_UID),
        (t::PATIENT_ID, VR::LO, "BULK1"),
        (t::MODALITY, VR::CS, "DOC"),
        (
            t::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
            VR::LO,
            "application/pdf",
        ),
    ] {
        object.put(InMemElement::new(tag, vr, PrimitiveValue::from(value)));
    }
    object.put(InMemElement::new(
        tags::ENCAPSULATED_DOCUMENT,
        VR::OB,
        PrimitiveValue::from(document.clone()),
    ));
    let file = object
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid(PDF_CLASS)
                .media_storage_sop_instance_uid(SOP),
        )
        .unwrap();
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[("Tessera__PublicBaseUrl", "https://pacs.example.org/dicom")],
    );
    assert_eq!(server.stow("/v2/studies", &[bytes]).await.0, 200);
    let metadata = server
        .get_json(&format!(
            "/v2/studies/{STUDY_UID}/series/{SERIES_UID}/metadata"
        ))
        .await;
    let uri = metadata[0]["00420011"]["BulkDataURI"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(metadata[0]["00420011"]["vr"], "OB");
    let path = uri
        .strip_prefix("https://pacs.example.org/dicom")
        .unwrap_or_else(|| panic!("{uri} is under the public base URL"));
    assert_eq!(
        path,
        format!("/v2/studies/{STUDY_UID}/series/{SERIES_UID}/instances/{SOP}/bulkdata/00420011")
    );
    let (status, kind, body) = get(&server, path, None).await;
    assert_eq!(status, 200);
    assert_eq!(kind.as_deref(), Some("application/octet-stream"));
    // OB values are padded to an even length.
    assert_eq!(&body[..document.len()], &document[..]);
    assert!(body.len() <= document.len() + 1);
    // An element the instance does not have, and a malformed tag.
    let missing = path.replace("00420011", "00281201");
    assert_eq!(get(&server, &missing, None).await.0, 404);
    let bad = path.replace("00420011", "xyz");
    assert_eq!(get(&server, &bad, None).await.0, 400);
}
