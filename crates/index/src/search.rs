//! QIDO-RS searches over studies, series and instances.

use sqlx::Row;
use sqlx::any::AnyRow;
use tessera_core::{Matcher, QidoQuery, QueryAttribute, QueryLevel, fold_person_name};

use crate::{CREATED, InstanceIndex, Result};

/// One search result: the attributes the index keeps for it and its higher levels, counts, and
/// its newest instance (for attributes only the metadata has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QidoRow {
    /// Values by attribute (only those that are set).
    pub values: Vec<(QueryAttribute, String)>,
    /// SOP Class UID (instance level).
    pub sop_class_uid: Option<String>,
    /// Modalities of the study's series.
    pub modalities_in_study: Vec<String>,
    /// Series in the study.
    pub study_series: u64,
    /// Instances in the study.
    pub study_instances: u64,
    /// Instances in the series (series and instance levels).
    pub series_instances: Option<u64>,
    /// The newest instance's watermark.
    pub representative: Option<u64>,
}

const STUDY_COLUMNS: [(QueryAttribute, &str); 8] = [
    (QueryAttribute::StudyInstanceUid, "s.study_uid"),
    (QueryAttribute::PatientName, "s.patient_name"),
    (QueryAttribute::PatientId, "s.patient_id"),
    (QueryAttribute::PatientBirthDate, "s.patient_birth_date"),
    (QueryAttribute::AccessionNumber, "s.accession_number"),
    (
        QueryAttribute::ReferringPhysicianName,
        "s.referring_physician_name",
    ),
    (QueryAttribute::StudyDate, "s.study_date"),
    (QueryAttribute::StudyDescription, "s.study_description"),
];
const SERIES_COLUMNS: [(QueryAttribute, &str); 4] = [
    (QueryAttribute::SeriesInstanceUid, "se.series_uid"),
    (QueryAttribute::Modality, "se.modality"),
    (
        QueryAttribute::PerformedProcedureStepStartDate,
        "se.performed_procedure_step_start_date",
    ),
    (
        QueryAttribute::ManufacturerModelName,
        "se.manufacturer_model_name",
    ),
];

fn column(attribute: QueryAttribute) -> &'static str {
    STUDY_COLUMNS
        .iter()
        .chain(SERIES_COLUMNS.iter())
        .find(|(a, _)| *a == attribute)
        .map(|(_, c)| *c)
        .unwrap_or("i.sop_uid")
}

/// `*` → `%`, `?` → `_`, with `%`, `_` and `\` escaped.
fn like_pattern(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn escape_like(value: &str) -> String {
    like_pattern(&value.replace(['*', '?'], ""))
}

/// Builds SQL conditions and their values, numbering placeholders from `binds.len() + 1`.
fn condition(attribute: QueryAttribute, matcher: &Matcher, binds: &mut Vec<String>) -> String {
    let mut bind = |value: String| {
        binds.push(value);
        format!("${}", binds.len())
    };
    let is_name = matches!(
        attribute,
        QueryAttribute::PatientName | QueryAttribute::ReferringPhysicianName
    );
    let base = column(attribute);
    if attribute == QueryAttribute::ModalitiesInStudy {
        let value = match matcher {
            Matcher::Exact(v) | Matcher::Fuzzy(v) | Matcher::Wildcard(v) => v.clone(),
            Matcher::UidList(v) => v.join(""),
            Matcher::Range(..) => String::new(),
        };
        let p = bind(value.to_lowercase());
        return format!(
            "EXISTS (SELECT 1 FROM series m WHERE m.study_uid = s.study_uid AND lower(m.modality) = {p})"
        );
    }
    match matcher {
        Matcher::Exact(value) if is_name => {
            format!("{base}_folded = {}", bind(fold_person_name(value)))
        }
        Matcher::Exact(value) if attribute.vr() == "UI" || attribute.vr() == "DA" => {
            format!("{base} = {}", bind(value.clone()))
        }
        Matcher::Exact(value) => format!("lower({base}) = {}", bind(value.to_lowercase())),
        Matcher::Wildcard(value) if is_name => format!(
            "{base}_folded LIKE {} ESCAPE '\\'",
            bind(like_pattern(&fold_person_name(value)))
        ),
        Matcher::Wildcard(value) => format!(
            "lower({base}) LIKE {} ESCAPE '\\'",
            bind(like_pattern(&value.to_lowercase()))
        ),
        Matcher::Range(from, to) => {
            let mut parts = Vec::new();
            if let Some(from) = from {
                parts.push(format!("{base} >= {}", bind(from.clone())));
            }
            if let Some(to) = to {
                parts.push(format!("{base} <= {}", bind(to.clone())));
            }
            parts.join(" AND ")
        }
        Matcher::UidList(values) => {
            let list: Vec<String> = values.iter().map(|v| bind(v.clone())).collect();
            format!("{base} IN ({})", list.join(", "))
        }
        Matcher::Fuzzy(value) if is_name => {
            let words: Vec<String> = fold_person_name(value)
                .split(['^', ' ', '='])
                .filter(|w| !w.is_empty())
                .map(|w| {
                    format!(
                        "{base}_words LIKE {} ESCAPE '\\'",
                        bind(format!("% {}%", escape_like(w)))
                    )
                })
                .collect();
            if words.is_empty() {
                "1 = 1".into()
            } else {
                words.join(" AND ")
            }
        }
        Matcher::Fuzzy(value) => format!("lower({base}) = {}", bind(value.to_lowercase())),
    }
}

impl InstanceIndex {
    /// Runs a QIDO search: `Created` instances only, newest first, paged.
    pub async fn search(&self, query: &QidoQuery) -> Result<Vec<QidoRow>> {
        let mut binds = Vec::new();
        let mut conditions = Vec::new();
        let visible_in = |scope: &str| {
            format!("EXISTS (SELECT 1 FROM instances v WHERE {scope} AND v.status = {CREATED})")
        };
        let (from, order, extra_columns) = match query.level {
            QueryLevel::Study => {
                conditions.push(visible_in("v.study_uid = s.study_uid"));
                (
                    "studies s".to_owned(),
                    "s.updated_at DESC, s.study_uid",
                    format!(
                        "NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                         (SELECT MAX(watermark) FROM instances v WHERE v.study_uid = s.study_uid AND v.status = {CREATED})"
                    ),
                )
            }
            QueryLevel::Series => {
                conditions.push(visible_in(
                    "v.study_uid = se.study_uid AND v.series_uid = se.series_uid",
                ));
                (
                    "series se JOIN studies s ON s.study_uid = se.study_uid".to_owned(),
                    "se.updated_at DESC, se.series_uid",
                    format!(
                        "se.series_uid, se.modality, se.performed_procedure_step_start_date, se.manufacturer_model_name, NULL, NULL,
                         (SELECT COUNT(*) FROM instances v WHERE v.study_uid = se.study_uid AND v.series_uid = se.series_uid AND v.status = {CREATED}),
                         (SELECT MAX(watermark) FROM instances v WHERE v.study_uid = se.study_uid AND v.series_uid = se.series_uid AND v.status = {CREATED})"
                    ),
                )
            }
            QueryLevel::Instance => {
                conditions.push(format!("i.status = {CREATED}"));
                (
                    "instances i JOIN series se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid
                     JOIN studies s ON s.study_uid = i.study_uid"
                        .to_owned(),
                    "i.watermark DESC",
                    format!(
                        "se.series_uid, se.modality, se.performed_procedure_step_start_date, se.manufacturer_model_name, i.sop_uid, i.sop_class_uid,
                         (SELECT COUNT(*) FROM instances v WHERE v.study_uid = i.study_uid AND v.series_uid = i.series_uid AND v.status = {CREATED}),
                         i.watermark"
                    ),
                )
            }
        };
        if let Some(study) = &query.study {
            binds.push(study.to_string());
            conditions.push(format!("s.study_uid = ${}", binds.len()));
        }
        if let Some(series) = &query.series {
            binds.push(series.to_string());
            conditions.push(format!("se.series_uid = ${}", binds.len()));
        }
        for (attribute, matcher) in &query.filters {
            conditions.push(condition(*attribute, matcher, &mut binds));
        }
        binds.push(query.limit.to_string());
        let limit = binds.len();
        binds.push(query.offset.to_string());
        let offset = binds.len();
        let study_columns: Vec<&str> = STUDY_COLUMNS.iter().map(|(_, c)| *c).collect();
        let sql = format!(
            "SELECT {}, {extra_columns},
                 (SELECT COUNT(*) FROM series x WHERE x.study_uid = s.study_uid),
                 (SELECT COUNT(*) FROM instances v WHERE v.study_uid = s.study_uid AND v.status = {CREATED})
             FROM {from} WHERE {} ORDER BY {order} LIMIT CAST(${limit} AS INTEGER) OFFSET CAST(${offset} AS INTEGER)",
            study_columns.join(", "),
            conditions.join(" AND "),
        );
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in binds {
            statement = statement.bind(value);
        }
        let rows = statement.fetch_all(&self.pool).await?;
        let mut results = rows
            .iter()
            .map(|row| self.qido_row(row, query.level))
            .collect::<Result<Vec<_>>>()?;
        self.add_modalities(&mut results).await?;
        Ok(results)
    }

    /// Fills in the modalities of the results' studies with one query.
    async fn add_modalities(&self, results: &mut [QidoRow]) -> Result<()> {
        let mut studies: Vec<String> = results
            .iter()
            .filter_map(|r| r.value(QueryAttribute::StudyInstanceUid).map(str::to_owned))
            .collect();
        studies.sort();
        studies.dedup();
        if studies.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=studies.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT DISTINCT study_uid, modality FROM series WHERE modality IS NOT NULL AND study_uid IN ({}) ORDER BY modality",
            placeholders.join(", ")
        );
        // Safe: numbered placeholders only; values are bound.
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for study in &studies {
            statement = statement.bind(study.clone());
        }
        for row in statement.fetch_all(&self.pool).await? {
            let (study, modality): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            for result in results
                .iter_mut()
                .filter(|r| r.value(QueryAttribute::StudyInstanceUid) == Some(study.as_str()))
            {
                result.modalities_in_study.push(modality.clone());
            }
        }
        Ok(())
    }

    fn qido_row(&self, row: &AnyRow, level: QueryLevel) -> Result<QidoRow> {
        let mut values = Vec::new();
        for (i, (attribute, _)) in STUDY_COLUMNS.iter().enumerate() {
            if let Some(value) = row.try_get::<Option<String>, _>(i)? {
                values.push((*attribute, value));
            }
        }
        if level != QueryLevel::Study {
            for (i, (attribute, _)) in SERIES_COLUMNS.iter().enumerate() {
                if let Some(value) = row.try_get::<Option<String>, _>(8 + i)? {
                    values.push((*attribute, value));
                }
            }
        }
        if let Some(sop) = row
            .try_get::<Option<String>, _>(12)?
            .filter(|_| level == QueryLevel::Instance)
        {
            values.push((QueryAttribute::SopInstanceUid, sop));
        }
        Ok(QidoRow {
            values,
            sop_class_uid: if level == QueryLevel::Instance {
                row.try_get(13)?
            } else {
                None
            },
            series_instances: if level == QueryLevel::Study {
                None
            } else {
                row.try_get::<Option<i64>, _>(14)?.map(|n| n as u64)
            },
            representative: row.try_get::<Option<i64>, _>(15)?.map(|w| w as u64),
            study_series: row.try_get::<i64, _>(16)? as u64,
            study_instances: row.try_get::<i64, _>(17)? as u64,
            modalities_in_study: Vec::new(),
        })
    }
}

impl QidoRow {
    /// The value of an attribute, if set.
    pub fn value(&self, attribute: QueryAttribute) -> Option<&str> {
        self.values
            .iter()
            .find(|(a, _)| *a == attribute)
            .map(|(_, v)| v.as_str())
    }
}
