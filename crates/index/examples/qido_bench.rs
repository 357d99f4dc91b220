//! Benchmark (not a test): QIDO search latency on a large embedded index.
//!
//! `cargo run --release -p tessera-index --example qido_bench -- [INSTANCES]` loads INSTANCES
//! instances (default 100,000: studies of 2 series × 5 instances) into a fresh index and prints
//! p50 and p95 latency per query kind. The index is a SQLite file in a temporary directory
//! (`QIDO_BENCH_DB` names another file), or the empty database at `QIDO_BENCH_INDEX`
//! (`postgres://…`; `bench/qido.sh --postgres` creates one).

use std::time::Instant;

use tessera_core::{
    InstanceIdentifier, Matcher, QidoQuery, QueryAttribute, QueryLevel, SearchableAttributes, Uid,
};
use tessera_index::{InstanceIndex, NewInstance};

const MODALITIES: [&str; 5] = ["CT", "MR", "US", "CR", "DX"];
const NAMES: [&str; 6] = [
    "Doe^John",
    "Smith^Anna",
    "Müller^Jürgen",
    "Garcia^Maria",
    "Chen^Wei",
    "Okafor^Ada",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let url = match std::env::var("QIDO_BENCH_INDEX") {
        Ok(url) => url,
        Err(_) => {
            let path = std::env::var("QIDO_BENCH_DB")
                .unwrap_or_else(|_| format!("{}/index.db", dir.path().display()));
            format!("sqlite://{path}")
        }
    };
    let index = InstanceIndex::open(&url).await?;
    println!("engine: {:?}", index.engine());
    let started = Instant::now();
    let studies = count / 10;
    // Four loaders at once (a server's concurrent stores); each takes every fourth study.
    let loaders: Vec<_> = (0..4)
        .map(|loader| {
            let index = index.clone();
            tokio::spawn(async move { load(&index, studies, loader, 4).await })
        })
        .collect();
    for loader in loaders {
        loader.await?.map_err(|e| e as Box<dyn std::error::Error>)?;
    }
    println!(
        "loaded {} instances in {:.0}s",
        studies * 10,
        started.elapsed().as_secs_f64()
    );
    search(&index, studies).await
}

/// Stores the studies `first, first + step, …` below `studies`.
async fn load(
    index: &InstanceIndex,
    studies: u32,
    first: u32,
    step: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    for study in (first..studies).step_by(step) {
        let patient = format!("P{:06}", study % (studies / 2).max(1));
        for i in 0..10 {
            let series = i / 5;
            let id = InstanceIdentifier::parse(
                &format!("1.2.{study}"),
                &format!("1.2.{study}.{series}"),
                &format!("1.2.{study}.{series}.{i}"),
            )?;
            let attributes = SearchableAttributes {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                patient_id: Some(patient.clone()),
                patient_name: Some(format!(
                    "{}{}",
                    NAMES[study as usize % NAMES.len()],
                    study % 97
                )),
                accession_number: Some(format!("A{study:07}")),
                study_date: Some(format!(
                    "20{:02}{:02}{:02}",
                    20 + study % 5,
                    1 + study % 12,
                    1 + study % 28
                )),
                modality: Some(
                    MODALITIES[(study as usize + series as usize) % MODALITIES.len()].into(),
                ),
                ..Default::default()
            };
            let new = NewInstance {
                id,
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                attributes,
                native_frames: None,
            };
            let watermark = index.begin_create(&new).await?;
            index.end_create(watermark, 1, "xxh3-128:0", false).await?;
        }
    }
    Ok(())
}

/// Runs each query kind 30 times and prints its p50 and p95.
async fn search(index: &InstanceIndex, studies: u32) -> Result<(), Box<dyn std::error::Error>> {
    let query = |level, filters: Vec<(QueryAttribute, Matcher)>| QidoQuery {
        level,
        study: None,
        series: None,
        filters,
        limit: 100,
        offset: 0,
    };
    let mid = studies / 2;
    let kinds: Vec<(&str, QidoQuery)> = vec![
        (
            "studies by PatientID",
            query(
                QueryLevel::Study,
                vec![(
                    QueryAttribute::PatientId,
                    Matcher::Exact(format!("P{:06}", mid % (studies / 2).max(1))),
                )],
            ),
        ),
        (
            "studies by StudyInstanceUID",
            query(
                QueryLevel::Study,
                vec![(
                    QueryAttribute::StudyInstanceUid,
                    Matcher::Exact(format!("1.2.{mid}")),
                )],
            ),
        ),
        (
            "studies by AccessionNumber",
            query(
                QueryLevel::Study,
                vec![(
                    QueryAttribute::AccessionNumber,
                    Matcher::Exact(format!("A{mid:07}")),
                )],
            ),
        ),
        (
            "instances by StudyInstanceUID",
            QidoQuery {
                study: Some(Uid::parse(&format!("1.2.{mid}"))?),
                ..query(QueryLevel::Instance, vec![])
            },
        ),
        (
            "series by Modality (limit 100)",
            query(
                QueryLevel::Series,
                vec![(QueryAttribute::Modality, Matcher::Exact("MR".into()))],
            ),
        ),
        (
            "studies by ModalitiesInStudy (limit 100)",
            query(
                QueryLevel::Study,
                vec![(
                    QueryAttribute::ModalitiesInStudy,
                    Matcher::Exact("CT".into()),
                )],
            ),
        ),
        (
            "studies by date range (limit 100)",
            query(
                QueryLevel::Study,
                vec![(
                    QueryAttribute::StudyDate,
                    Matcher::Range(Some("20220101".into()), Some("20220630".into())),
                )],
            ),
        ),
        (
            "studies by fuzzy name (limit 100)",
            query(
                QueryLevel::Study,
                vec![(QueryAttribute::PatientName, Matcher::Fuzzy("mul".into()))],
            ),
        ),
        ("all studies (limit 100)", query(QueryLevel::Study, vec![])),
    ];
    for (label, query) in kinds {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..30 {
            let started = Instant::now();
            found = index.search(&query).await?.len();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{label:<42} p50 {:>7.2} ms  p95 {:>7.2} ms  ({found} results)",
            times[times.len() / 2],
            times[times.len() * 95 / 100]
        );
    }
    Ok(())
}
