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
