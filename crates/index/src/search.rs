//! QIDO-RS searches over studies, series and instances.

use tessera_core::{Matcher, QidoQuery, QueryAttribute, QueryLevel, fold_person_name};

use crate::rows::unsigned;
use crate::{CREATED, CREATING, InstanceIndex, Result};

/// A value bound to a search's numbered placeholder.
enum Bind {
    Text(String),
    Integer(i64),
}

/// Binds `value` as the next placeholder and returns its name (`$N`).
fn placeholder(binds: &mut Vec<Bind>, value: Bind) -> String {
    binds.push(value);
    format!("${}", binds.len())
}

/// One search result row, by column name (the study columns, then series and instance columns,
/// which are NULL at the levels that have none).
#[derive(Debug, sqlx::FromRow)]
struct SearchRow {
    study_uid: Option<String>,
    patient_name: Option<String>,
    patient_id: Option<String>,
    patient_birth_date: Option<String>,
    accession_number: Option<String>,
    referring_physician_name: Option<String>,
    study_date: Option<String>,
    study_description: Option<String>,
    series_uid: Option<String>,
    modality: Option<String>,
    performed_procedure_step_start_date: Option<String>,
    manufacturer_model_name: Option<String>,
    sop_uid: Option<String>,
    sop_class_uid: Option<String>,
    series_instances: Option<i64>,
    representative: Option<i64>,
    study_series: Option<i64>,
    study_instances: Option<i64>,
}

/// One search result: the attributes the index keeps for it and its higher levels, and what
/// the query asked to compute (`QidoComputed`): counts, and its newest instance (for attributes
/// only the metadata has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QidoRow {
    /// Values by attribute (only those that are set).
    pub values: Vec<(QueryAttribute, String)>,
    /// SOP Class UID (instance level).
    pub sop_class_uid: Option<String>,
    /// Modalities of the study's series (when asked for).
    pub modalities_in_study: Vec<String>,
    /// Series in the study (when asked for).
    pub study_series: Option<u64>,
    /// Instances in the study (when asked for).
    pub study_instances: Option<u64>,
    /// Instances in the series (series and instance levels, when asked for).
    pub series_instances: Option<u64>,
    /// The newest instance's watermark (when asked for).
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

/// `EXISTS (SELECT 1 FROM {from_where} LIMIT 1)`: whether a row matches.
///
/// The `LIMIT 1` changes nothing the condition means (PostgreSQL drops it) but keeps SQLite
/// (3.51) from rewriting the subquery into a join ("EXISTS-to-JOIN", which it skips for a
/// subquery with a LIMIT): when a search walks an index in result order, that join counts OFFSET
/// once per matching inner row instead of once per result, and pages skip results (series by
/// Modality with 5 instances per series: OFFSET 5 skipped one series).
fn exists(from_where: &str) -> String {
    format!("EXISTS (SELECT 1 FROM {from_where} LIMIT 1)")
}

/// Builds SQL conditions and their values, numbering placeholders from `binds.len() + 1`.
fn condition(attribute: QueryAttribute, matcher: &Matcher, binds: &mut Vec<Bind>) -> String {
    let mut bind = |value: String| placeholder(binds, Bind::Text(value));
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
        return exists(&format!(
            "series m WHERE m.study_uid = s.study_uid AND lower(m.modality) = {p}"
        ));
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
        let created = placeholder(&mut binds, Bind::Integer(CREATED.into()));
        let mut conditions = Vec::new();
        // Visible: with a `Created` instance. A study or series row always has an instance row
        // (it is written with its first instance and removed with its last, see
        // `remove_empty_parents`), so only those with a `Creating` instance (a short list) can
        // lack one; where the engine screens by that list, the others pass without the lookup
        // in their instances, which at a million instances costs more than the rest of a search
        // that sorts its matches.
        let creating = self
            .engine
            .screens_visibility_by_reservations()
            .then(|| placeholder(&mut binds, Bind::Integer(CREATING.into())));
        let visible = |table: &str, key: &str, scope: &str| {
            let has_created = exists(&format!(
                "instances v WHERE {scope} AND v.status = {created}"
            ));
            match &creating {
                Some(creating) => format!(
                    "({table}.{key} NOT IN (SELECT c.{key} FROM instances c WHERE c.status = {creating}) OR {has_created})"
                ),
                None => has_created,
            }
        };
        let computed = query.computed;
        // A computed column is its lookup when asked for, else NULL (typed, for PostgreSQL).
        let computed_column = |asked: bool, sql: String, name: &str| {
            if asked {
                format!("{sql} AS {name}")
            } else {
                format!("CAST(NULL AS BIGINT) AS {name}")
            }
        };
        let series_scope = |table: &str| {
            format!(
                "FROM instances v WHERE v.study_uid = {table}.study_uid AND v.series_uid = {table}.series_uid
                     AND v.status = {created}"
            )
        };
        let (from, order, page_keys, page_from, page_order, level_columns) = match query.level {
            QueryLevel::Study => {
                conditions.push(visible("s", "study_uid", "v.study_uid = s.study_uid"));
                (
                    "studies s",
                    "s.updated_at DESC, s.study_uid",
                    "s.study_uid AS page_study_uid, s.updated_at AS page_updated_at",
                    "JOIN studies s ON s.study_uid = page.page_study_uid",
                    "page.page_updated_at DESC, page.page_study_uid",
                    format!(
                        "NULL AS series_uid, NULL AS modality, NULL AS performed_procedure_step_start_date,
                         NULL AS manufacturer_model_name, NULL AS sop_uid, NULL AS sop_class_uid,
                         CAST(NULL AS BIGINT) AS series_instances, {}",
                        computed_column(
                            computed.representative,
                            format!(
                                "(SELECT MAX(watermark) FROM instances v
                                     WHERE v.study_uid = s.study_uid AND v.status = {created})"
                            ),
                            "representative"
                        )
                    ),
                )
            }
            QueryLevel::Series => {
                conditions.push(visible(
                    "se",
                    "series_uid",
                    "v.study_uid = se.study_uid AND v.series_uid = se.series_uid",
                ));
                (
                    "series se JOIN studies s ON s.study_uid = se.study_uid",
                    "se.updated_at DESC, se.series_uid",
                    "se.study_uid AS page_study_uid, se.series_uid AS page_series_uid,
                     se.updated_at AS page_updated_at",
                    "JOIN series se ON se.study_uid = page.page_study_uid AND se.series_uid = page.page_series_uid
                     JOIN studies s ON s.study_uid = se.study_uid",
                    "page.page_updated_at DESC, page.page_series_uid",
                    format!(
                        "se.series_uid, se.modality, se.performed_procedure_step_start_date, se.manufacturer_model_name,
                         NULL AS sop_uid, NULL AS sop_class_uid, {}, {}",
                        computed_column(
                            computed.series_instances,
                            format!("(SELECT COUNT(*) {})", series_scope("se")),
                            "series_instances"
                        ),
                        computed_column(
                            computed.representative,
                            format!("(SELECT MAX(watermark) {})", series_scope("se")),
                            "representative"
                        )
                    ),
                )
            }
            QueryLevel::Instance => {
                conditions.push(format!("i.status = {created}"));
                (
                    "instances i",
                    "i.watermark DESC",
                    "i.watermark AS page_watermark",
                    "JOIN instances i ON i.watermark = page.page_watermark
                     JOIN series se ON se.study_uid = i.study_uid AND se.series_uid = i.series_uid
                     JOIN studies s ON s.study_uid = i.study_uid",
                    "page.page_watermark DESC",
                    format!(
                        "se.series_uid, se.modality, se.performed_procedure_step_start_date, se.manufacturer_model_name,
                         i.sop_uid, i.sop_class_uid, {}, {}",
                        computed_column(
                            computed.series_instances,
                            format!("(SELECT COUNT(*) {})", series_scope("i")),
                            "series_instances"
                        ),
                        computed_column(
                            computed.representative,
                            "i.watermark".into(),
                            "representative"
                        )
                    ),
                )
            }
        };
        let (study_key, series_key) = match query.level {
            QueryLevel::Instance => ("i.study_uid", "i.series_uid"),
            _ => ("s.study_uid", "se.series_uid"),
        };
        if let Some(study) = &query.study {
            let p = placeholder(&mut binds, Bind::Text(study.to_string()));
            conditions.push(format!("{study_key} = {p}"));
        }
        if let Some(series) = &query.series {
            let p = placeholder(&mut binds, Bind::Text(series.to_string()));
            conditions.push(format!("{series_key} = {p}"));
        }
        // An instance search matches its series' and study's attributes in a subquery rather than
        // a join: PostgreSQL misjudges how many rows the two-column join to series leaves, and
        // sorts every instance instead of walking them newest first. (Every instance row has its
        // series and study rows, written with it, so without such a match it reads instances only.)
        let mut parent_conditions = Vec::new();
        for (attribute, matcher) in &query.filters {
            let sql = condition(*attribute, matcher, &mut binds);
            let of_parent = *attribute == QueryAttribute::ModalitiesInStudy
                || STUDY_COLUMNS
                    .iter()
                    .chain(SERIES_COLUMNS.iter())
                    .any(|(a, _)| a == attribute);
            if query.level == QueryLevel::Instance && of_parent {
                parent_conditions.push(sql);
            } else {
                conditions.push(sql);
            }
        }
        if !parent_conditions.is_empty() {
            conditions.push(exists(&format!(
                "series se JOIN studies s ON s.study_uid = se.study_uid
                 WHERE se.study_uid = i.study_uid AND se.series_uid = i.series_uid AND {}",
                parent_conditions.join(" AND ")
            )));
        }
        // The page size is written into the text, not bound: SQLite plans with a LIMIT's value
        // (it walks an index in result order when few rows are wanted), so binding one marks the
        // statement to be prepared again at its next bind, and sqlx binds every value on every
        // run. A cached statement would then be re-parsed and re-planned on each search, which
        // was a fifth of the server's CPU per small search. It is an integer (`u32`), so the
        // text stays free of input; limits are few (1–200), so statements stay cached.
        let limit = query.limit;
        let offset = placeholder(&mut binds, Bind::Integer(i64::from(query.offset)));
        let study_columns: Vec<String> = STUDY_COLUMNS
            .iter()
            .map(|(_, c)| format!("{c} AS {}", c.trim_start_matches("s.")))
            .collect();
        // The page's keys first, then the columns of its rows only: the counts and the newest
        // instance cost index lookups that a sort over every match would otherwise pay for all.
        let study_series = computed_column(
            computed.study_series,
            "(SELECT COUNT(*) FROM series x WHERE x.study_uid = s.study_uid)".into(),
            "study_series",
        );
        let study_instances = computed_column(
            computed.study_instances,
            format!(
                "(SELECT COUNT(*) FROM instances v WHERE v.study_uid = s.study_uid AND v.status = {created})"
            ),
            "study_instances",
        );
        let sql = format!(
            "SELECT {}, {level_columns}, {study_series}, {study_instances}
             FROM (SELECT {page_keys} FROM {from} WHERE {} ORDER BY {order} LIMIT {limit} OFFSET {offset}) page
                 {page_from}
             ORDER BY {page_order}",
            study_columns.join(", "),
            conditions.join(" AND "),
        );
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut statement = sqlx::query_as::<_, SearchRow>(sqlx::AssertSqlSafe(sql));
        for value in binds {
            statement = match value {
                Bind::Text(text) => statement.bind(text),
                Bind::Integer(number) => statement.bind(number),
            };
        }
        let rows = statement.fetch_all(&self.pool).await?;
        let mut results = rows
            .into_iter()
            .map(|row| qido_row(row, query.level))
            .collect::<Result<Vec<_>>>()?;
        if computed.modalities_in_study {
            self.add_modalities(&mut results).await?;
        }
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
            "SELECT DISTINCT study_uid, modality FROM series WHERE modality IS NOT NULL AND study_uid IN ({})
             ORDER BY modality",
            placeholders.join(", ")
        );
        #[derive(sqlx::FromRow)]
        struct ModalityRow {
            study_uid: String,
            modality: String,
        }
        // Safe: numbered placeholders only; values are bound.
        let mut statement = sqlx::query_as::<_, ModalityRow>(sqlx::AssertSqlSafe(sql));
        for study in &studies {
            statement = statement.bind(study.clone());
        }
        for row in statement.fetch_all(&self.pool).await? {
            for result in results.iter_mut().filter(|r| {
                r.value(QueryAttribute::StudyInstanceUid) == Some(row.study_uid.as_str())
            }) {
                result.modalities_in_study.push(row.modality.clone());
            }
        }
        Ok(())
    }
}

fn qido_row(row: SearchRow, level: QueryLevel) -> Result<QidoRow> {
    let study_values = [
        (QueryAttribute::StudyInstanceUid, row.study_uid),
        (QueryAttribute::PatientName, row.patient_name),
        (QueryAttribute::PatientId, row.patient_id),
        (QueryAttribute::PatientBirthDate, row.patient_birth_date),
        (QueryAttribute::AccessionNumber, row.accession_number),
        (
            QueryAttribute::ReferringPhysicianName,
            row.referring_physician_name,
        ),
        (QueryAttribute::StudyDate, row.study_date),
        (QueryAttribute::StudyDescription, row.study_description),
    ];
    let series_values = [
        (QueryAttribute::SeriesInstanceUid, row.series_uid),
        (QueryAttribute::Modality, row.modality),
        (
            QueryAttribute::PerformedProcedureStepStartDate,
            row.performed_procedure_step_start_date,
        ),
        (
            QueryAttribute::ManufacturerModelName,
            row.manufacturer_model_name,
        ),
    ];
    let mut values: Vec<(QueryAttribute, Option<String>)> = study_values.into();
    if level != QueryLevel::Study {
        values.extend(series_values);
    }
    if level == QueryLevel::Instance {
        values.push((QueryAttribute::SopInstanceUid, row.sop_uid));
    }
    let values = values
        .into_iter()
        .filter_map(|(attribute, value)| value.map(|v| (attribute, v)))
        .collect();
    Ok(QidoRow {
        values,
        sop_class_uid: if level == QueryLevel::Instance {
            row.sop_class_uid
        } else {
            None
        },
        series_instances: match level {
            QueryLevel::Study => None,
            _ => row
                .series_instances
                .map(|n| unsigned(n, "count"))
                .transpose()?,
        },
        representative: row
            .representative
            .map(|w| unsigned(w, "watermark"))
            .transpose()?,
        study_series: row.study_series.map(|n| unsigned(n, "count")).transpose()?,
        study_instances: row
            .study_instances
            .map(|n| unsigned(n, "count"))
            .transpose()?,
        modalities_in_study: Vec::new(),
    })
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
