//! QIDO-RS searches over studies, series and instances.

use sqlx::Row;
use sqlx::any::AnyRow;
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

/// A column of a search's result rows, read by its name.
#[derive(Clone, Copy)]
enum Field {
    /// An attribute's value (a text column).
    Value(QueryAttribute),
    SopClassUid,
    StudySeries,
    StudyInstances,
    SeriesInstances,
    Representative,
}

/// One search result: what the query asked for (`QidoFields`) of the attributes the index keeps
/// for it and its higher levels, counts, and its newest instance (for attributes only the
/// metadata has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QidoRow {
    /// Values by attribute (those asked for that are set).
    pub values: Vec<(QueryAttribute, String)>,
    /// SOP Class UID (instance level, when asked for).
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

/// The series' columns and the instance's own, for instance-level results.
const INSTANCE_COLUMNS: [(QueryAttribute, &str); 5] = [
    SERIES_COLUMNS[0],
    SERIES_COLUMNS[1],
    SERIES_COLUMNS[2],
    SERIES_COLUMNS[3],
    (QueryAttribute::SopInstanceUid, "i.sop_uid"),
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
        let fields = &query.fields;
        let series_scope = |table: &str| {
            format!(
                "FROM instances v WHERE v.study_uid = {table}.study_uid AND v.series_uid = {table}.series_uid
                     AND v.status = {created}"
            )
        };
        // The table whose rows the results are, and the newest instance of one.
        let (from, order, page_keys, page_from, page_order, level_table, representative) =
            match query.level {
                QueryLevel::Study => {
                    conditions.push(visible("s", "study_uid", "v.study_uid = s.study_uid"));
                    (
                        "studies s",
                        "s.created_at DESC, s.study_uid",
                        "s.study_uid AS page_study_uid, s.created_at AS page_created_at",
                        "JOIN studies s ON s.study_uid = page.page_study_uid",
                        "page.page_created_at DESC, page.page_study_uid",
                        "s",
                        format!(
                            "(SELECT MAX(watermark) FROM instances v
                                 WHERE v.study_uid = s.study_uid AND v.status = {created})"
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
                        "se.created_at DESC, se.series_uid",
                        "se.study_uid AS page_study_uid, se.series_uid AS page_series_uid,
                         se.created_at AS page_created_at",
                        "JOIN series se ON se.study_uid = page.page_study_uid AND se.series_uid = page.page_series_uid
                         JOIN studies s ON s.study_uid = se.study_uid",
                        "page.page_created_at DESC, page.page_series_uid",
                        "se",
                        format!("(SELECT MAX(watermark) {})", series_scope("se")),
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
                        "i",
                        "i.watermark".to_owned(),
                    )
                }
            };
        // The columns of the results: the attributes asked for, of this level and above, with
        // the UIDs that name the result (the study's also keys ModalitiesInStudy), then what is
        // computed.
        let level_attributes: &[(QueryAttribute, &str)] = match query.level {
            QueryLevel::Study => &[],
            QueryLevel::Series => &SERIES_COLUMNS,
            QueryLevel::Instance => &INSTANCE_COLUMNS,
        };
        let mut columns: Vec<(Field, String, &str)> = STUDY_COLUMNS
            .iter()
            .chain(level_attributes)
            .filter(|(attribute, _)| {
                attribute.vr() == "UI" || fields.attributes.contains(attribute)
            })
            .map(|(attribute, column)| {
                let name = column.split_once('.').map_or(*column, |(_, name)| name);
                (Field::Value(*attribute), (*column).to_owned(), name)
            })
            .collect();
        let level = query.level;
        let computed = [
            (
                fields.sop_class_uid && level == QueryLevel::Instance,
                Field::SopClassUid,
                "i.sop_class_uid".to_owned(),
                "sop_class_uid",
            ),
            (
                fields.series_instances && level != QueryLevel::Study,
                Field::SeriesInstances,
                format!("(SELECT COUNT(*) {})", series_scope(level_table)),
                "series_instances",
            ),
            (
                fields.representative,
                Field::Representative,
                representative,
                "representative",
            ),
            (
                fields.study_series,
                Field::StudySeries,
                "(SELECT COUNT(*) FROM series x WHERE x.study_uid = s.study_uid)".to_owned(),
                "study_series",
            ),
            (
                fields.study_instances,
                Field::StudyInstances,
                format!(
                    "(SELECT COUNT(*) FROM instances v WHERE v.study_uid = s.study_uid AND v.status = {created})"
                ),
                "study_instances",
            ),
        ];
        columns.extend(
            computed
                .into_iter()
                .filter(|(asked, ..)| *asked)
                .map(|(_, field, sql, name)| (field, sql, name)),
        );
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
        let select: Vec<String> = columns
            .iter()
            .map(|(_, sql, name)| format!("{sql} AS {name}"))
            .collect();
        // The page's keys first, then the columns of its rows only: the counts and the newest
        // instance cost index lookups that a sort over every match would otherwise pay for all.
        let sql = format!(
            "SELECT {}
             FROM (SELECT {page_keys} FROM {from} WHERE {} ORDER BY {order} LIMIT {limit} OFFSET {offset}) page
                 {page_from}
             ORDER BY {page_order}",
            select.join(", "),
            conditions.join(" AND "),
        );
        // Safe: the SQL is built from constant fragments, numbered placeholders and the page size
        // (an integer); values are bound.
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in binds {
            statement = match value {
                Bind::Text(text) => statement.bind(text),
                Bind::Integer(number) => statement.bind(number),
            };
        }
        let mut reader = self.reader().await?;
        let rows = statement.fetch_all(reader.connection()?).await;
        let rows = reader.check(rows)?;
        let mut results = rows
            .iter()
            .map(|row| qido_row(row, &columns))
            .collect::<Result<Vec<_>>>()?;
        if fields
            .attributes
            .contains(&QueryAttribute::ModalitiesInStudy)
        {
            add_modalities(reader.connection()?, &mut results).await?;
        }
        Ok(results)
    }
}

/// Fills in the modalities of the results' studies with one query on `connection` (the
/// search's own: a second one could wait on searches that wait for it).
async fn add_modalities(
    connection: &mut sqlx::AnyConnection,
    results: &mut [QidoRow],
) -> Result<()> {
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
    for row in statement.fetch_all(&mut *connection).await? {
        for result in results
            .iter_mut()
            .filter(|r| r.value(QueryAttribute::StudyInstanceUid) == Some(row.study_uid.as_str()))
        {
            result.modalities_in_study.push(row.modality.clone());
        }
    }
    Ok(())
}

fn qido_row(row: &AnyRow, columns: &[(Field, String, &str)]) -> Result<QidoRow> {
    let count = |name: &str, what: &str| -> Result<Option<u64>> {
        row.try_get::<Option<i64>, _>(name)?
            .map(|n| unsigned(n, what))
            .transpose()
    };
    let mut result = QidoRow::default();
    for (field, _, name) in columns {
        match field {
            Field::Value(attribute) => {
                if let Some(value) = row.try_get::<Option<String>, _>(*name)? {
                    result.values.push((*attribute, value));
                }
            }
            Field::SopClassUid => result.sop_class_uid = row.try_get(*name)?,
            Field::StudySeries => result.study_series = count(name, "count")?,
            Field::StudyInstances => result.study_instances = count(name, "count")?,
            Field::SeriesInstances => result.series_instances = count(name, "count")?,
            Field::Representative => result.representative = count(name, "watermark")?,
        }
    }
    Ok(result)
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
