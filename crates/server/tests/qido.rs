//! QIDO-RS against a real server: every scope, matching kind, paging edge and includefield form,
//! on both API versions.

use std::path::Path;

use serde_json::Value;
use tessera_testkit::server::{TestServer, testdata};
use tessera_testkit::synthetic::Synthetic;

struct Fixture {
    server: TestServer,
    /// The API version queries go to (paths are written with `/v2/`).
    version: std::cell::Cell<&'static str>,
    _dir: tempfile::TempDir,
}

fn synthetic(
    study: &str,
    series: &str,
    sop: &str,
    patient: &str,
    name: &str,
    date: &str,
    modality: &str,
) -> Vec<u8> {
    let mut s = Synthetic::new(study, series, sop);
    s.patient_id = patient.into();
    s.patient_name = name.into();
    s.study_date = date.into();
    s.modality = modality.into();
    s.bytes()
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(Path::new(env!("CARGO_BIN_EXE_tessera")), dir.path(), &[]);
    let parts = vec![
        synthetic(
            "1.1",
            "1.1.1",
            "1.1.1.1",
            "P1",
            "Müller^Jürgen",
            "20240110",
            "CT",
        ),
        synthetic(
            "1.1",
            "1.1.1",
            "1.1.1.2",
            "P1",
            "Müller^Jürgen",
            "20240110",
            "CT",
        ),
        synthetic(
            "1.1",
            "1.1.2",
            "1.1.2.1",
            "P1",
            "Müller^Jürgen",
            "20240110",
            "MR",
        ),
        synthetic(
            "1.2", "1.2.1", "1.2.1.1", "P2", "Doe^John", "20240215", "MR",
        ),
        synthetic(
            "1.3",
            "1.3.1",
            "1.3.1.1",
            "P3",
            "Smith^Anna",
            "20231201",
            "US",
        ),
        std::fs::read(testdata().join("blue-circle.dcm")).unwrap(),
    ];
    let (status, body) = server.stow("/v2/studies", &parts).await;
    assert_eq!(status, 200, "{body}");
    Fixture {
        server,
        version: std::cell::Cell::new("v2"),
        _dir: dir,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        self.server
            .url(&path.replacen("/v2/", &format!("/{}/", self.version.get()), 1))
    }

    async fn query(&self, path: &str) -> (u16, Vec<Value>) {
        let response = reqwest::get(self.url(path)).await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let items = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        (status, items)
    }

    async fn uids(&self, path: &str, tag: &str) -> Vec<String> {
        let (status, items) = self.query(path).await;
        assert!(status == 200 || status == 204, "{path}: {status}");
        items
            .iter()
            .map(|i| i[tag]["Value"][0].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn studies(&self, query: &str) -> Vec<String> {
        let mut uids = self.uids(&format!("/v2/studies?{query}"), "0020000D").await;
        uids.sort();
        uids
    }
}

#[tokio::test]
async fn every_scope_on_both_versions() {
    let f = fixture().await;
    for version in ["v1", "v2"] {
        assert_eq!(
            f.uids(&format!("/{version}/studies"), "0020000D")
                .await
                .len(),
            4
        );
        assert_eq!(
            f.uids(&format!("/{version}/series"), "0020000E")
                .await
                .len(),
            5
        );
        assert_eq!(
            f.uids(&format!("/{version}/instances"), "00080018")
                .await
                .len(),
            6
        );
        let mut series = f
            .uids(&format!("/{version}/studies/1.1/series"), "0020000E")
            .await;
        series.sort();
        assert_eq!(series, ["1.1.1", "1.1.2"]);
        assert_eq!(
            f.uids(&format!("/{version}/studies/1.1/instances"), "00080018")
                .await
                .len(),
            3
        );
        let mut instances = f
            .uids(
                &format!("/{version}/studies/1.1/series/1.1.1/instances"),
                "00080018",
            )
            .await;
        instances.sort();
        assert_eq!(instances, ["1.1.1.1", "1.1.1.2"]);
    }
}

#[tokio::test]
async fn matching_kinds() {
    let f = fixture().await;
    for version in ["v1", "v2"] {
        f.version.set(version);
        assert_eq!(f.studies("PatientID=P2").await, ["1.2"]);
        assert_eq!(
            f.studies("00100020=p2").await,
            ["1.2"],
            "tags and case-insensitive values"
        );
        assert_eq!(f.studies("StudyInstanceUID=1.2,1.3").await, ["1.2", "1.3"]);
        assert_eq!(
            f.studies("PatientName=M%C3%BCller%5EJ%C3%BCrgen").await,
            ["1.1"],
            "percent-decoded UTF-8"
        );
        assert_eq!(
            f.studies("PatientName=MULLER%5Ejurgen").await,
            ["1.1"],
            "case- and accent-insensitive"
        );
        assert_eq!(f.studies("PatientName=m%C3%BCl*").await, ["1.1"]);
        assert_eq!(
            f.studies("PatientID=P%3F").await.len(),
            3,
            "? matches one character"
        );
        assert_eq!(
            f.studies("PatientName=jur&fuzzymatching=true").await,
            ["1.1"],
            "prefix of a component"
        );
        assert_eq!(
            f.studies("PatientName=jo%20do&fuzzymatching=true").await,
            ["1.2"]
        );
        assert!(
            f.studies("PatientName=ohn&fuzzymatching=true")
                .await
                .is_empty(),
            "not a prefix"
        );
        assert!(
            f.studies("PatientName=jur").await.is_empty(),
            "no fuzzy matching unless asked"
        );
        assert_eq!(f.studies("StudyDate=20240101-20240131").await, ["1.1"]);
        assert_eq!(f.studies("StudyDate=20240201-").await, ["1.2"]);
        let before = f.studies("StudyDate=-20231231").await;
        assert!(
            before.contains(&"1.3".to_owned())
                && !before.contains(&"1.1".to_owned())
                && !before.contains(&"1.2".to_owned()),
            "{before:?}"
        );
        assert_eq!(f.studies("ModalitiesInStudy=MR").await, ["1.1", "1.2"]);
        let series = f.uids("/v2/series?Modality=ct", "0020000E").await;
        assert_eq!(series, ["1.1.1"]);
        let instances = f
            .uids("/v2/instances?PatientID=P1&Modality=MR", "00080018")
            .await;
        assert_eq!(instances, ["1.1.2.1"]);
    }
}

#[tokio::test]
async fn paging_and_errors() {
    let f = fixture().await;
    for version in ["v1", "v2"] {
        f.version.set(version);
        let all = f.uids("/v2/instances", "00080018").await;
        assert_eq!(
            all[0],
            f.uids("/v2/instances?limit=1", "00080018").await[0],
            "newest first"
        );
        let first = f.uids("/v2/instances?limit=4&offset=0", "00080018").await;
        let second = f.uids("/v2/instances?limit=4&offset=4", "00080018").await;
        assert_eq!([first, second].concat(), all, "stable paging");
        assert_eq!(
            f.query("/v2/instances?offset=6").await.0,
            204,
            "past the end"
        );
        assert_eq!(f.query("/v2/studies?PatientID=nobody").await.0, 204);
        for bad in [
            "limit=0",
            "limit=201",
            "offset=-1",
            "PatientWeight=70",
            "Modality=CT",
            "StudyDate=2024",
            "PatientID=",
            "fuzzymatching=maybe",
            "includefield=NoSuchThing",
        ] {
            let response = reqwest::get(f.url(&format!("/v2/studies?{bad}")))
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{bad}");
            let key = bad.split('=').next().unwrap();
            let text = response.text().await.unwrap();
            assert!(
                text.contains(key) || text.contains("NoSuchThing"),
                "{bad}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn returned_attributes() {
    let f = fixture().await;
    for version in ["v1", "v2"] {
        f.version.set(version);
        let (_, studies) = f.query("/v2/studies?PatientID=P1").await;
        let study = &studies[0];
        assert_eq!(study["00100010"]["Value"][0]["Alphabetic"], "Müller^Jürgen");
        assert_eq!(study["00080020"]["Value"][0], "20240110");
        assert!(study.get("00201208").is_none(), "counts only when asked");
        let (_, counted) = f.query("/v2/studies?PatientID=P1&includefield=NumberOfStudyRelatedInstances&includefield=00201206,ModalitiesInStudy").await;
        assert_eq!(counted[0]["00201208"]["Value"][0], 3);
        assert_eq!(counted[0]["00201206"]["Value"][0], 2);
        assert_eq!(
            counted[0]["00080061"]["Value"],
            serde_json::json!(["CT", "MR"])
        );
        let (_, series) = f
            .query("/v2/series?PatientID=P1&includefield=NumberOfSeriesRelatedInstances")
            .await;
        assert_eq!(series.len(), 2);
        assert!(
            series.iter().all(|s| s["00100020"]["Value"][0] == "P1"),
            "cross-level: study attributes"
        );
        let counts: Vec<u64> = series
            .iter()
            .map(|s| s["00201209"]["Value"][0].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 3);
        let (_, scoped) = f.query("/v2/studies/1.1/series").await;
        assert!(
            scoped[0].get("00100010").is_none(),
            "scoped: no study defaults"
        );
        assert_eq!(
            scoped[0]["0020000D"]["Value"][0], "1.1",
            "scoped: the UID from the URL"
        );
        let (_, instance) = f
            .query("/v2/instances?SOPInstanceUID=1.1.1.1&includefield=all")
            .await;
        assert_eq!(
            instance[0]["00080016"]["Value"][0],
            "1.2.840.10008.5.1.4.1.1.7"
        );
        assert_eq!(
            instance[0]["00280010"]["Value"][0], 4,
            "Rows, from the metadata"
        );
    }
    f.version.set("v2");
    // v1's default sets are larger than v2's.
    let blue = "1.2.826.0.1.3680043.8.498.13230779778012324449356534479549187420";
    let (_, v1) = f
        .query(&format!("/v1/studies?StudyInstanceUID={blue}"))
        .await;
    let (_, v2) = f
        .query(&format!("/v2/studies?StudyInstanceUID={blue}"))
        .await;
    assert!(
        v1[0].as_object().unwrap().len() > v2[0].as_object().unwrap().len(),
        "{} vs {}",
        v1[0],
        v2[0]
    );
}
