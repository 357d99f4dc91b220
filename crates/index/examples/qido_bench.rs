//! Benchmark (not a test): QIDO search latency on a large index.
//!
//! `cargo run --release -p tessera-index --example qido_bench -- [INSTANCES]` loads INSTANCES
//! instances (default 100,000: studies of 2 series × 5 instances) into a fresh index and prints
//! p50 and p95 latency per query kind. The index is a SQLite file in a temporary directory
//! (`QIDO_BENCH_DB` names another file), or the empty database at `QIDO_BENCH_INDEX`
//! (`postgres://…`; `bench/qido.sh --postgres` creates one).
//!
//! Storing a million instances one by one through the index (two transactions each) takes most
//! of an hour, so the load writes the rows a store writes directly, in large multi-row inserts:
//! the index has no bulk path, and the searches measured read what a store leaves. Before the
//! load, the rows of a few studies written both ways (stores through the index, and the bulk
//! writer) are compared in scratch SQLite files, so the bulk writer cannot drift from the store.

use std::time::Instant;

use sqlx::{Column, Connection, Row};
use tessera_core::{
    InstanceIdentifier, Matcher, QidoFields, QidoQuery, QueryAttribute, QueryLevel,
    SearchableAttributes, Uid, person_name_search_forms,
};
use tessera_index::{Engine, InstanceIndex, NewInstance};

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
    check_bulk_matches_store(dir.path()).await?;
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
    bulk_load(&index, &url, studies).await?;
    println!(
        "loaded {} instances in {:.0}s",
        studies * 10,
        started.elapsed().as_secs_f64()
    );
    search(&index, studies).await
}

/// Instances per study (2 series of 5).
const PER_STUDY: u32 = 10;
/// Instances per series.
const PER_SERIES: u32 = 5;

/// The identifiers and searchable attributes of instance `i` of study `study` (of `studies`).
fn instance(study: u32, i: u32, studies: u32) -> Result<NewInstance, Box<dyn std::error::Error>> {
    let series = i / PER_SERIES;
    let id = InstanceIdentifier::parse(
        &format!("1.2.{study}"),
        &format!("1.2.{study}.{series}"),
        &format!("1.2.{study}.{series}.{i}"),
    )?;
    let attributes = SearchableAttributes {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        patient_id: Some(format!("P{:06}", study % (studies / 2).max(1))),
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
        modality: Some(MODALITIES[(study as usize + series as usize) % MODALITIES.len()].into()),
        ..Default::default()
    };
    Ok(NewInstance {
        id,
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        attributes,
        native_frames: None,
    })
}

/// What a store of the instance records besides its attributes: its blob's length and checksum.
const CONTENT_LENGTH: u64 = 1;
const CHECKSUM: &str = "xxh3-128:0";
/// `Created` (instances.status) and `ChangeAction::Create` (change_feed.action).
const CREATED: i16 = 1;
const CREATE: i16 = 0;

/// Studies per transaction of the bulk load, and rows per INSERT statement (within SQLite's
/// 32,766 and PostgreSQL's 65,535 bound values).
const STUDIES_PER_TRANSACTION: u32 = 2_000;
const ROWS_PER_INSERT: usize = 40;

/// A table's rows for one multi-row INSERT: its column names and each row's values.
struct Rows {
    table: &'static str,
    columns: &'static [&'static str],
    values: Vec<Value>,
}

/// A bound value.
enum Value {
    Text(Option<String>),
    Integer(i64),
}

impl Rows {
    fn new(table: &'static str, columns: &'static [&'static str]) -> Self {
        Self {
            table,
            columns,
            values: Vec::new(),
        }
    }

    /// Inserts the rows, `ROWS_PER_INSERT` at a time.
    async fn insert(
        self,
        connection: &mut sqlx::AnyConnection,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let width = self.columns.len();
        let mut values = self.values.into_iter().peekable();
        while values.peek().is_some() {
            let chunk: Vec<Value> = values.by_ref().take(width * ROWS_PER_INSERT).collect();
            let tuples: Vec<String> = (0..chunk.len() / width)
                .map(|row| {
                    let fields: Vec<String> = (1..=width)
                        .map(|column| format!("${}", row * width + column))
                        .collect();
                    format!("({})", fields.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} ({}) VALUES {}",
                self.table,
                self.columns.join(", "),
                tuples.join(", ")
            );
            // Safe: constant table and column names and numbered placeholders; values are bound.
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
            for value in chunk {
                statement = match value {
                    Value::Text(text) => statement.bind(text),
                    Value::Integer(number) => statement.bind(number),
                };
            }
            statement.execute(&mut *connection).await?;
        }
        Ok(())
    }
}

/// Writes studies `0..studies` as a store of each instance in turn (study by study, each
/// instance reserved at `t` and made visible at `t + 1` µs) leaves them: the study and series
/// rows as of their last instance, the `Created` instance rows, one change-feed row per instance
/// and the watermark sequence past the last watermark.
async fn bulk_load(
    index: &InstanceIndex,
    url: &str,
    studies: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut connection = sqlx::AnyConnection::connect(url).await?;
    if index.engine() == Engine::Sqlite {
        // A page cache that holds the indexes being filled (the default is 2 MiB).
        sqlx::query("PRAGMA cache_size = -262144")
            .execute(&mut connection)
            .await?;
    }
    let start = chrono::Utc::now().timestamp_micros();
    let mut watermark: i64 = 0;
    let mut first = 0;
    while first < studies {
        let last = (first + STUDIES_PER_TRANSACTION).min(studies);
        let mut study_rows = Rows::new(
            "studies",
            &[
                "study_uid",
                "patient_id",
                "patient_name",
                "patient_birth_date",
                "accession_number",
                "referring_physician_name",
                "study_date",
                "study_description",
                "created_at",
                "patient_name_folded",
                "patient_name_words",
                "referring_physician_name_folded",
                "referring_physician_name_words",
            ],
        );
        let mut series_rows = Rows::new(
            "series",
            &[
                "study_uid",
                "series_uid",
                "modality",
                "performed_procedure_step_start_date",
                "manufacturer_model_name",
                "created_at",
            ],
        );
        let mut instance_rows = Rows::new(
            "instances",
            &[
                "watermark",
                "study_uid",
                "series_uid",
                "sop_uid",
                "sop_class_uid",
                "transfer_syntax",
                "status",
                "created_at",
                "updated_at",
                "content_length",
                "checksum",
                "has_frame_ranges",
                "owner_id",
            ],
        );
        let mut feed_rows = Rows::new(
            "change_feed",
            &[
                "timestamp",
                "action",
                "study_uid",
                "series_uid",
                "sop_uid",
                "original_watermark",
                "current_watermark",
            ],
        );
        for study in first..last {
            for i in 0..PER_STUDY {
                watermark += 1;
                let reserved = start + 2 * watermark;
                let visible = reserved + 1;
                let new = instance(study, i, studies)?;
                let a = &new.attributes;
                let (study_uid, series_uid, sop_uid) = (
                    new.id.study.to_string(),
                    new.id.series.to_string(),
                    new.id.sop.to_string(),
                );
                // The study row as the study's last instance leaves it.
                if i == PER_STUDY - 1 {
                    let patient = a.patient_name.as_deref().map(person_name_search_forms);
                    let referring = a
                        .referring_physician_name
                        .as_deref()
                        .map(person_name_search_forms);
                    study_rows.values.extend([
                        Value::Text(Some(study_uid.clone())),
                        Value::Text(a.patient_id.clone()),
                        Value::Text(a.patient_name.clone()),
                        Value::Text(a.patient_birth_date.clone()),
                        Value::Text(a.accession_number.clone()),
                        Value::Text(a.referring_physician_name.clone()),
                        Value::Text(a.study_date.clone()),
                        Value::Text(a.study_description.clone()),
                        Value::Integer(reserved),
                        Value::Text(patient.as_ref().map(|p| p.0.clone())),
                        Value::Text(patient.map(|p| p.1)),
                        Value::Text(referring.as_ref().map(|r| r.0.clone())),
                        Value::Text(referring.map(|r| r.1)),
                    ]);
                }
                // The series row as the series' last instance leaves it.
                if i % PER_SERIES == PER_SERIES - 1 {
                    series_rows.values.extend([
                        Value::Text(Some(study_uid.clone())),
                        Value::Text(Some(series_uid.clone())),
                        Value::Text(a.modality.clone()),
                        Value::Text(a.performed_procedure_step_start_date.clone()),
                        Value::Text(a.manufacturer_model_name.clone()),
                        Value::Integer(reserved),
                    ]);
                }
                instance_rows.values.extend([
                    Value::Integer(watermark),
                    Value::Text(Some(study_uid.clone())),
                    Value::Text(Some(series_uid.clone())),
                    Value::Text(Some(sop_uid.clone())),
                    Value::Text(Some(a.sop_class_uid.clone())),
                    Value::Text(Some(new.transfer_syntax.clone())),
                    Value::Integer(CREATED.into()),
                    Value::Integer(reserved),
                    Value::Integer(visible),
                    Value::Integer(CONTENT_LENGTH as i64),
                    Value::Text(Some(CHECKSUM.into())),
                    Value::Integer(0),
                    Value::Text(None),
                ]);
                feed_rows.values.extend([
                    Value::Integer(visible),
                    Value::Integer(CREATE.into()),
                    Value::Text(Some(study_uid)),
                    Value::Text(Some(series_uid)),
                    Value::Text(Some(sop_uid)),
                    Value::Integer(watermark),
                    Value::Integer(watermark),
                ]);
            }
        }
        let mut tx = connection.begin().await?;
        for rows in [study_rows, series_rows, instance_rows, feed_rows] {
            rows.insert(&mut tx).await?;
        }
        tx.commit().await?;
        first = last;
    }
    let sequence = match index.engine() {
        Engine::Sqlite => "UPDATE watermark_sequence SET next_value = $1 WHERE id = 1",
        Engine::Postgres => "SELECT setval('watermark_sequence', $1, false)",
    };
    sqlx::query(sequence)
        .bind(watermark + 1)
        .execute(&mut connection)
        .await?;
    if index.engine() == Engine::Postgres {
        // What autovacuum keeps up as an index fills over time (statistics, the visibility map
        // index-only scans rely on); a bulk load outruns it, and the planner would otherwise
        // plan the searches for empty tables.
        sqlx::query("VACUUM ANALYZE")
            .execute(&mut connection)
            .await?;
    }
    Ok(())
}

/// Stores the first studies of the data set through the index into one scratch SQLite file and
/// bulk-writes them into another, and fails unless every row is the same (times aside, but in
/// the same time order).
async fn check_bulk_matches_store(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    const STUDIES: u32 = 3;
    let stored_url = format!("sqlite://{}/stored.db", dir.display());
    let stored = InstanceIndex::open(&stored_url).await?;
    for study in 0..STUDIES {
        for i in 0..PER_STUDY {
            let watermark = stored.begin_create(&instance(study, i, STUDIES)?).await?;
            stored
                .end_create(watermark, CONTENT_LENGTH, CHECKSUM, false)
                .await?;
        }
    }
    let bulk_url = format!("sqlite://{}/bulk.db", dir.display());
    let bulk = InstanceIndex::open(&bulk_url).await?;
    bulk_load(&bulk, &bulk_url, STUDIES).await?;
    for table in [
        "SELECT * FROM studies ORDER BY created_at, study_uid",
        "SELECT * FROM series ORDER BY created_at, study_uid, series_uid",
        "SELECT * FROM instances ORDER BY updated_at, watermark",
        "SELECT * FROM change_feed ORDER BY sequence",
        "SELECT * FROM watermark_sequence",
    ] {
        let stored_rows = dump(&stored_url, table).await?;
        let bulk_rows = dump(&bulk_url, table).await?;
        if stored_rows != bulk_rows {
            return Err(format!(
                "bulk load differs from a store ({table}):\n{stored_rows:#?}\n{bulk_rows:#?}"
            )
            .into());
        }
    }
    Ok(())
}

/// The rows of a query as text, without the time columns (a store's times are its clock's).
async fn dump(
    url: &str,
    sql: &'static str,
) -> Result<Vec<Vec<String>>, Box<dyn std::error::Error>> {
    let mut connection = sqlx::AnyConnection::connect(url).await?;
    let rows = sqlx::query(sql).fetch_all(&mut connection).await?;
    let mut out = Vec::new();
    for row in rows {
        let mut fields = Vec::new();
        for (i, column) in row.columns().iter().enumerate() {
            if ["updated_at", "created_at", "timestamp"].contains(&column.name()) {
                continue;
            }
            let value = match row.try_get::<Option<String>, _>(i) {
                Ok(text) => format!("{text:?}"),
                Err(_) => format!("{:?}", row.try_get::<Option<i64>, _>(i)?),
            };
            fields.push(format!("{}={value}", column.name()));
        }
        out.push(fields);
    }
    Ok(out)
}

/// Runs each query kind 30 times and prints its p50 and p95.
async fn search(index: &InstanceIndex, studies: u32) -> Result<(), Box<dyn std::error::Error>> {
    let query = |level, filters: Vec<(QueryAttribute, Matcher)>| QidoQuery {
        level,
        study: None,
        series: None,
        // As the HTTP layer asks for a v2 search without includefield: the level's default
        // attributes (and those of the levels above), and the matched ones.
        fields: QidoFields {
            attributes: QueryAttribute::ALL
                .into_iter()
                .filter(|a| {
                    *a != QueryAttribute::ModalitiesInStudy
                        || filters.iter().any(|(matched, _)| matched == a)
                })
                .collect(),
            ..QidoFields::default()
        },
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
        ("all series (limit 100)", query(QueryLevel::Series, vec![])),
        (
            "all instances (limit 100)",
            query(QueryLevel::Instance, vec![]),
        ),
        (
            "instances by Modality (limit 100)",
            query(
                QueryLevel::Instance,
                vec![(QueryAttribute::Modality, Matcher::Exact("MR".into()))],
            ),
        ),
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
