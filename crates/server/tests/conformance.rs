//! The edges of the original's behaviour that its clients rely on (issue 14, and the Accept
//! forms of issue 15), against a real server process: change-feed parameters, content
//! negotiation before existence, multipart STOW bodies per RFC 2046, and v1/v2 validation
//! details.

use std::path::Path;

use serde_json::Value;
use tessera_testkit::server::TestServer;
use tessera_testkit::synthetic::Synthetic;

fn start(dir: &Path) -> TestServer {
    TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir, &[])
}

const VERSIONS: [&str; 2] = ["/v1", "/v2"];

async fn get(server: &TestServer, path: &str, accept: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.url(path));
    if let Some(accept) = accept {
        request = request.header("Accept", accept);
    }
    request.send().await.unwrap()
}

async fn status(server: &TestServer, path: &str, accept: Option<&str>) -> u16 {
    get(server, path, accept).await.status().as_u16()
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn instance_path(synthetic: &Synthetic) -> String {
    format!(
        "/studies/{}/series/{}/instances/{}",
        synthetic.study, synthetic.series, synthetic.sop
    )
}

#[tokio::test]
async fn change_feed_reads_booleans_as_dotnet_does_and_checks_the_time_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let synthetic = Synthetic::new("1.2.3.700", "1.2.3.700.1", "1.2.3.700.1.1");
    assert_eq!(
        server.stow("/v1/studies", &[synthetic.bytes()]).await.0,
        200
    );

    for version in VERSIONS {
        for (value, included) in [
            ("True", true),
            ("TRUE", true),
            ("true", true),
            ("False", false),
            ("fAlSe", false),
            ("%20false%20", false),
        ] {
            for path in ["/changefeed", "/changefeed/latest"] {
                let url = format!("{version}{path}?includeMetadata={value}");
                let response = get(&server, &url, None).await;
                assert_eq!(response.status(), 200, "{url}");
                let body: Value = response.json().await.unwrap();
                let entry = if body.is_array() { &body[0] } else { &body };
                assert_eq!(entry.get("metadata").is_some(), included, "{url}: {entry}");
            }
        }
        for bad in ["yes", "1", "tru"] {
            let url = format!("{version}/changefeed?includeMetadata={bad}");
            assert_eq!(status(&server, &url, None).await, 400, "{url}");
        }
    }

    let window = |start: &str, end: &str| format!("/v2/changefeed?startTime={start}&endTime={end}");
    for (start, end) in [
        ("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
        ("2024-01-01T01:00:00%2B01:00", "2024-01-01T00:00:00Z"),
    ] {
        let url = window(start, end);
        assert_eq!(status(&server, &url, None).await, 400, "{url}");
    }
    let url = window("2000-01-01T00:00:00Z", "2999-01-01T00:00:00Z");
    let entries: Value = get(&server, &url, None).await.json().await.unwrap();
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{entries}");
}

#[tokio::test]
async fn an_unsupported_accept_is_406_even_for_what_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let study = "/studies/1.2.3.404";
    let series = "/studies/1.2.3.404/series/1.2.3.404.1";
    let instance = "/studies/1.2.3.404/series/1.2.3.404.1/instances/1.2.3.404.1.1";
    let mpeg2 =
        "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.100";
    for version in VERSIONS {
        for (path, accept) in [
            (study, "application/dicom"),
            (series, "application/dicom"),
            (instance, "application/octet-stream"),
            (series, "application/octet-stream"),
            (study, mpeg2),
            (instance, mpeg2),
            (
                instance,
                "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.101",
            ),
            (&format!("{study}/metadata"), "application/dicom"),
            (&format!("{series}/metadata"), "image/png"),
            (
                &format!("{instance}/metadata"),
                "multipart/related; type=\"application/dicom\"",
            ),
            (&format!("{instance}/frames/1"), "application/dicom"),
            (
                &format!("{instance}/frames/1,2"),
                "application/octet-stream",
            ),
        ] {
            let url = format!("{version}{path}");
            assert_eq!(
                status(&server, &url, Some(accept)).await,
                406,
                "{url} {accept}"
            );
        }
        // A supported Accept on what does not exist is still 404.
        for (path, accept) in [
            (study, Some("multipart/related; type=\"application/dicom\"")),
            (series, Some("*/*")),
            (instance, Some("application/dicom")),
            (instance, None),
            (&format!("{study}/metadata"), Some("application/dicom+json")),
            (&format!("{instance}/frames/1"), Some("*/*")),
        ] {
            let url = format!("{version}{path}");
            assert_eq!(status(&server, &url, accept).await, 404, "{url} {accept:?}");
        }
    }
}

#[tokio::test]
async fn accept_values_are_read_leniently_and_in_order_of_preference() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let synthetic = Synthetic::new("1.2.3.701", "1.2.3.701.1", "1.2.3.701.1.1");
    assert_eq!(
        server.stow("/v1/studies", &[synthetic.bytes()]).await.0,
        200
    );
    let explicit = "1.2.840.10008.1.2.1";
    for version in VERSIONS {
        let instance = format!("{version}{}", instance_path(&synthetic));

        // Frames with `*/*` come as stored: one frame bare, several as multipart.
        let one = get(&server, &format!("{instance}/frames/2"), Some("*/*")).await;
        assert_eq!(one.status(), 200);
        assert_eq!(
            content_type(&one),
            format!("application/octet-stream; transfer-syntax={explicit}")
        );
        assert_eq!(one.bytes().await.unwrap().to_vec(), synthetic.frame(1));
        let several = get(&server, &format!("{instance}/frames/1,3"), Some("*/*")).await;
        assert_eq!(several.status(), 200);
        assert!(content_type(&several).starts_with("multipart/related"));

        // OHIF's unquoted `type`, and other forms of the same request.
        for accept in [
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*",
            "multipart/related;type=application/octet-stream",
            "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
            "image/jp2;q=0.9, multipart/related; type=application/octet-stream",
            "*/*; transfer-syntax=*",
        ] {
            let response = get(&server, &format!("{instance}/frames/1,2"), Some(accept)).await;
            assert_eq!(response.status(), 200, "{accept}");
            let returned = content_type(&response);
            assert!(
                returned.starts_with("multipart/related")
                    && returned.contains("application/octet-stream"),
                "{accept}: {returned}"
            );
        }

        // q-values decide between a bare instance and a multipart one.
        for (accept, multipart) in [
            (
                "application/dicom;q=0.2, multipart/related; type=application/dicom; q=0.9",
                true,
            ),
            (
                "multipart/related; type=application/dicom; q=0.2, application/dicom",
                false,
            ),
            ("image/png, text/html;q=0.9, application/dicom;q=0.5", false),
            (
                "application/dicom;q=0, multipart/related; type=application/dicom",
                true,
            ),
            (
                "multipart/related; type=\"application/dicom\"; transfer-syntax=1.2.840.10008.1.2.4.50, application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
                false,
            ),
        ] {
            let response = get(&server, &instance, Some(accept)).await;
            assert_eq!(response.status(), 200, "{accept}");
            assert_eq!(
                content_type(&response).starts_with("multipart/related"),
                multipart,
                "{accept}"
            );
        }
        let refused = get(&server, &instance, Some("application/dicom;q=0")).await;
        assert_eq!(refused.status(), 406);

        // `?accept=` stands for the header (PS3.18 §8.3.3.1).
        let query = "accept=multipart%2Frelated%3B%20type%3D%22application%2Fdicom%22";
        let response = get(
            &server,
            &format!("{instance}?{query}"),
            Some("application/dicom"),
        )
        .await;
        assert_eq!(response.status(), 200);
        assert!(content_type(&response).starts_with("multipart/related"));
        let response = get(
            &server,
            &format!("{instance}/metadata?accept=application%2Fdicom"),
            Some("application/dicom+json"),
        )
        .await;
        assert_eq!(response.status(), 406);
        let response = get(
            &server,
            &format!("{instance}/metadata?accept=application%2Fdicom%2Bjson"),
            Some("*/*"),
        )
        .await;
        assert_eq!(response.status(), 200);
    }
}

async fn post(server: &TestServer, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .header("Content-Type", content_type)
        .header("Accept", "application/dicom+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn referenced_count(body: &Value) -> usize {
    body["00081199"]["Value"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn multipart_stow_bodies_are_read_as_rfc_2046_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let related = "multipart/related; type=\"application/dicom\"; boundary=b0und";
    for (index, version) in VERSIONS.iter().enumerate() {
        let path = format!("{version}/studies");
        // No parts: the close delimiter alone, or .NET's MultipartContent without parts.
        for body in [
            &b"--b0und--\r\n"[..],
            b"--b0und\r\n\r\n--b0und--\r\n",
            b"preamble\r\n--b0und--\r\nepilogue",
        ] {
            let (status, response) = post(&server, &path, related, body.to_vec()).await;
            assert_eq!(status, 204, "{version} {body:?}: {response}");
        }

        // A part without Content-Type takes the request's `type`; preamble, transport
        // padding after the boundaries and an epilogue are all allowed.
        let uid = |n: usize| format!("1.2.3.702.{index}.{n}");
        let first = Synthetic::new(&uid(0), &uid(1), &uid(2));
        let second = Synthetic::new(&uid(0), &uid(1), &uid(3));
        let mut body = b"This is the preamble; it is ignored.\r\n--b0und \t\r\n\r\n".to_vec();
        body.extend_from_slice(&first.bytes());
        body.extend_from_slice(b"\r\n--b0und\t\r\nContent-Type: application/dicom\r\n\r\n");
        body.extend_from_slice(&second.bytes());
        body.extend_from_slice(b"\r\n--b0und-- \r\nThis is the epilogue.\r\n");
        let (status, response) = post(&server, &path, related, body).await;
        assert_eq!(status, 200, "{version}: {response}");
        assert_eq!(referenced_count(&response), 2, "{response}");

        // The request's `type` unquoted, as some clients send it, and a part without headers.
        let third = Synthetic::new(&uid(0), &uid(1), &uid(4));
        let mut body = b"--b0und\r\n\r\n".to_vec();
        body.extend_from_slice(&third.bytes());
        body.extend_from_slice(b"\r\n--b0und--");
        let unquoted = "multipart/related; type=application/dicom; boundary=b0und";
        let (status, response) = post(&server, &path, unquoted, body).await;
        assert_eq!(status, 200, "{version}: {response}");
        assert_eq!(referenced_count(&response), 1, "{response}");

        // A part that says it is DICOM but holds nothing fails as the original's did.
        let empty = b"--b0und\r\nContent-Type: application/dicom\r\n\r\n\r\n--b0und--".to_vec();
        let (status, response) = post(&server, &path, related, empty).await;
        assert_eq!(status, 409, "{version}: {response}");
    }
}

fn items<'a>(dataset: &'a Value, tag: &str) -> Vec<&'a Value> {
    dataset[tag]["Value"]
        .as_array()
        .map(|items| items.iter().collect())
        .unwrap_or_default()
}

/// The ErrorComments of an item's FailedAttributesSequence; `None` when it has none.
fn failed_attributes(item: &Value) -> Option<Vec<String>> {
    let sequence = item.get("00741048")?;
    assert_eq!(sequence["vr"], "SQ", "{item}");
    Some(
        items(item, "00741048")
            .iter()
            .map(|a| a["00000902"]["Value"][0].as_str().unwrap().to_owned())
            .collect(),
    )
}

fn synthetic(n: u32) -> Synthetic {
    Synthetic::new(
        &format!("1.2.3.710.{n}"),
        &format!("1.2.3.710.{n}.1"),
        &format!("1.2.3.710.{n}.1.1"),
    )
}

const MISSING_PATIENT_ID: &str =
    "DICOM100: (0010,0020) - The required tag '(0010,0020)' is missing.";

#[tokio::test]
async fn v2_treats_nul_padding_as_padding_and_lists_failed_attributes_on_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    // Trailing NUL padding in UIDs, PatientID and a searchable attribute: 200, no warning, an
    // empty FailedAttributesSequence; the file and the metadata keep the bytes.
    let mut padded = synthetic(1);
    padded.study = "1.2.3.710.1\0".into();
    padded.patient_id = "PID710\0".into();
    padded.modality = "OT\0".into();
    let bytes = padded.bytes();
    let (status, body) = server
        .stow("/v2/studies", std::slice::from_ref(&bytes))
        .await;
    assert_eq!(status, 200, "{body}");
    let item = items(&body, "00081199")[0];
    assert!(item.get("00081196").is_none(), "no warning: {item}");
    assert_eq!(failed_attributes(item), Some(vec![]), "{item}");
    let path = "/v2/studies/1.2.3.710.1/series/1.2.3.710.1.1/instances/1.2.3.710.1.1.1";
    let file = get(&server, path, Some("application/dicom")).await;
    assert_eq!(file.status(), 200);
    assert!(
        file.bytes().await.unwrap() == bytes.as_slice(),
        "the file as sent"
    );
    let metadata: Value = get(&server, &format!("{path}/metadata"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        metadata[0]["00100020"]["Value"][0], "PID710\0",
        "the metadata keeps the padding: {}",
        metadata[0]["00100020"]
    );
    for query in [
        "/v2/studies?PatientID=PID710",
        "/v2/studies?PatientID=PID710%00",
        "/v2/series?Modality=OT%00",
        "/v2/series?Modality=OT",
    ] {
        let found: Value = get(&server, query, None).await.json().await.unwrap();
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{query}: {found}");
    }

    // A leading NUL in PatientID fails (43264) and names the attribute.
    let mut leading = synthetic(2);
    leading.patient_id = "\0PID".into();
    let (status, body) = server.stow("/v2/studies", &[leading.bytes()]).await;
    assert_eq!(status, 409, "{body}");
    let failed = items(&body, "00081198")[0];
    assert_eq!(failed["00081197"]["Value"][0], 43264);
    let comments = failed_attributes(failed).unwrap();
    assert!(
        comments[0].starts_with("DICOM100: (0010,0020) - "),
        "{comments:?}"
    );

    // A NUL inside a searchable attribute's value is stored with a warning for it.
    let mut inside = synthetic(3);
    inside.modality = "X\0X".into();
    let (status, body) = server.stow("/v2/studies", &[inside.bytes()]).await;
    assert_eq!(status, 202, "{body}");
    let item = items(&body, "00081199")[0];
    assert_eq!(item["00081196"]["Value"][0], 1);
    let comments = failed_attributes(item).unwrap();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert!(
        comments[0].starts_with("DICOM100: (0008,0060) - ") && comments[0].contains("VR CS"),
        "{comments:?}"
    );

    // Every stored item carries the sequence, in a mixed request too.
    let (status, body) = server
        .stow("/v2/studies", &[synthetic(4).bytes(), inside.bytes()])
        .await;
    assert_eq!(status, 202, "{body}");
    let stored = items(&body, "00081199");
    assert_eq!(stored.len(), 1);
    assert_eq!(failed_attributes(stored[0]), Some(vec![]));
}

#[tokio::test]
async fn v2_stores_an_empty_patient_id_with_a_warning_and_keeps_the_study_value() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let study = "1.2.3.720";
    let instance = |n: u32, patient: &str| {
        let mut s = Synthetic::new(study, "1.2.3.720.1", &format!("1.2.3.720.1.{n}"));
        s.patient_id = patient.into();
        s
    };
    let study_patient = || async {
        let found: Value = get(
            &server,
            &format!("/v2/studies?StudyInstanceUID={study}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        found[0]["00100020"]["Value"][0].clone()
    };

    for n in [1, 3] {
        if n == 3 {
            let (status, body) = server
                .stow("/v2/studies", &[instance(2, "PID720").bytes()])
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(study_patient().await, "PID720");
        }
        let (status, body) = server.stow("/v2/studies", &[instance(n, "").bytes()]).await;
        assert_eq!(status, 202, "{body}");
        let item = items(&body, "00081199")[0];
        assert_eq!(item["00081196"]["Value"][0], 1, "{item}");
        assert_eq!(
            failed_attributes(item),
            Some(vec![MISSING_PATIENT_ID.to_owned()])
        );
    }
    assert_eq!(
        study_patient().await,
        "PID720",
        "a later instance without PatientID does not reset the study's"
    );

    // Without the element at all: v2 stores it with the same warning, and the study keeps its
    // value; v1 fails it.
    let mut missing = instance(4, "");
    missing.omit_patient_id = true;
    let (status, body) = server.stow("/v2/studies", &[missing.bytes()]).await;
    assert_eq!(status, 202, "{body}");
    let item = items(&body, "00081199")[0];
    assert_eq!(item["00081196"]["Value"][0], 1, "{item}");
    assert_eq!(
        failed_attributes(item),
        Some(vec![MISSING_PATIENT_ID.to_owned()])
    );
    assert_eq!(study_patient().await, "PID720");
    missing.sop = "1.2.3.720.1.6".into();
    let (status, body) = server.stow("/v1/studies", &[missing.bytes()]).await;
    assert_eq!(status, 409, "{body}");
    let failed = items(&body, "00081198")[0];
    assert_eq!(
        failed_attributes(failed),
        Some(vec![MISSING_PATIENT_ID.to_owned()])
    );
    // v1 requires a value.
    let (status, body) = server.stow("/v1/studies", &[instance(5, "").bytes()]).await;
    assert_eq!(status, 409, "{body}");
    let failed = items(&body, "00081198")[0];
    assert_eq!(
        failed_attributes(failed),
        Some(vec![MISSING_PATIENT_ID.to_owned()])
    );
}

#[tokio::test]
async fn v1_names_each_invalid_attribute_in_the_failed_item() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    // A NUL anywhere in PatientID, padding included.
    for (n, patient) in [(1, "Before Null Character, \0"), (2, "PI\0D"), (3, "\0PID")] {
        let mut nul = synthetic(100 + n);
        nul.patient_id = patient.into();
        let (status, body) = server.stow("/v1/studies", &[nul.bytes()]).await;
        assert_eq!(status, 409, "{patient:?}: {body}");
        let failed = items(&body, "00081198")[0];
        assert_eq!(failed["00081197"]["Value"][0], 43264);
        assert_eq!(
            failed_attributes(failed),
            Some(vec![
                "DICOM100: (0010,0020) - Dicom element 'PatientID' failed validation for VR 'LO': Value contains invalid character."
                    .to_owned()
            ]),
            "{patient:?}"
        );
    }
    // The same trailing padding is no problem in v2.
    let mut padded = synthetic(104);
    padded.patient_id = "Before Null Character, \0".into();
    let (status, body) = server.stow("/v2/studies", &[padded.bytes()]).await;
    assert_eq!(status, 200, "{body}");

    // Invalid UIDs and values that do not fit their VR.
    let bad_study = |uid: &str| Synthetic::new(uid, "1.2.3.730.1", "1.2.3.730.1.1");
    let mut bad_date = synthetic(105);
    bad_date.study_date = "NotAValidDate".into();
    let mut bad_modality = synthetic(106);
    bad_modality.modality = "lower case".into();
    for (instance, tag) in [
        (bad_study("abc.123"), "(0020,000D)"),
        (bad_study("11|"), "(0020,000D)"),
        (bad_date, "(0008,0020)"),
        (bad_modality, "(0008,0060)"),
    ] {
        let (status, body) = server.stow("/v1/studies", &[instance.bytes()]).await;
        assert_eq!(status, 409, "{tag}: {body}");
        let failed = items(&body, "00081198")[0];
        assert_eq!(failed["00081197"]["Value"][0], 43264, "{tag}");
        let comments = failed_attributes(failed).unwrap_or_default();
        assert_eq!(comments.len(), 1, "{tag}: {comments:?}");
        assert!(
            comments[0].starts_with(&format!("DICOM100: {tag} - ")),
            "{tag}: {comments:?}"
        );
    }
    // A failure that is not about an attribute has no FailedAttributesSequence in v1.
    let duplicate = synthetic(107);
    assert_eq!(
        server.stow("/v1/studies", &[duplicate.bytes()]).await.0,
        200
    );
    let (status, body) = server.stow("/v1/studies", &[duplicate.bytes()]).await;
    assert_eq!(status, 409, "{body}");
    let failed = items(&body, "00081198")[0];
    assert_eq!(failed["00081197"]["Value"][0], 45070);
    assert_eq!(failed_attributes(failed), None);
}
