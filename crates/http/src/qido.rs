//! QIDO-RS: `GET /studies`, `/series`, `/instances` and their scoped forms (PS3.18 §10.6,
//! orig D.5).

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tessera_core::{Limits, Matcher, QidoFields, QidoQuery, QueryAttribute, QueryLevel, Uid};
use tessera_service::{ApiVersion, QidoRow};

use crate::stow::parse_uid;
use crate::{ApiError, AppState};

/// `GET /studies`.
#[utoipa::path(get, path = "/studies", tag = "QIDO-RS", params(crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn studies(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    search(s, v, q, QueryLevel::Study, None, None).await
}

/// `GET /series`.
#[utoipa::path(get, path = "/series", tag = "QIDO-RS", params(crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn all_series(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    search(s, v, q, QueryLevel::Series, None, None).await
}

/// `GET /instances`.
#[utoipa::path(get, path = "/instances", tag = "QIDO-RS", params(crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn all_instances(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    search(s, v, q, QueryLevel::Instance, None, None).await
}

/// `GET /studies/{study}/series`.
#[utoipa::path(get, path = "/studies/{study}/series", tag = "QIDO-RS", params(crate::openapi::StudyPath, crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn study_series(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    Path(study): Path<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let study = parse_uid(&study, "StudyInstanceUID")?;
    search(s, v, q, QueryLevel::Series, Some(study), None).await
}

/// `GET /studies/{study}/instances`.
#[utoipa::path(get, path = "/studies/{study}/instances", tag = "QIDO-RS", params(crate::openapi::StudyPath, crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn study_instances(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    Path(study): Path<String>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let study = parse_uid(&study, "StudyInstanceUID")?;
    search(s, v, q, QueryLevel::Instance, Some(study), None).await
}

/// `GET /studies/{study}/series/{series}/instances`.
#[utoipa::path(get, path = "/studies/{study}/series/{series}/instances", tag = "QIDO-RS", params(crate::openapi::SeriesPath, crate::openapi::QidoParams), responses((status = 200, description = "Matching attributes, DICOM JSON", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "Nothing matched")))]
pub async fn series_instances(
    s: State<AppState>,
    v: Extension<ApiVersion>,
    Path((study, series)): Path<(String, String)>,
    q: RawQuery,
) -> Result<Response, ApiError> {
    let study = parse_uid(&study, "StudyInstanceUID")?;
    let series = parse_uid(&series, "SeriesInstanceUID")?;
    search(s, v, q, QueryLevel::Instance, Some(study), Some(series)).await
}

/// What to return besides the matches.
#[derive(Default)]
struct Includes {
    all: bool,
    /// Tags (8 hex digits) asked for by `includefield`.
    tags: Vec<String>,
}

fn level_rank(level: QueryLevel) -> u8 {
    match level {
        QueryLevel::Study => 0,
        QueryLevel::Series => 1,
        QueryLevel::Instance => 2,
    }
}

/// Parses the query string into a search, or a 400 that names the offending key.
fn parse(
    raw: Option<&str>,
    level: QueryLevel,
    study: Option<Uid>,
    series: Option<Uid>,
    limits: &Limits,
) -> Result<(QidoQuery, Includes), ApiError> {
    let mut query = QidoQuery {
        level,
        study,
        series,
        filters: Vec::new(),
        limit: 100,
        offset: 0,
        fields: QidoFields::default(),
    };
    let mut includes = Includes::default();
    let mut fuzzy = false;
    let mut raw_filters = Vec::new();
    let max_parameters = limits.max_query_parameters as usize;
    let too_many = || {
        ApiError::BadRequest(format!(
            "the query has more than Tessera:Limits:MaxQueryParameters ({max_parameters}) parameters"
        ))
    };
    for (count, (key, value)) in
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).enumerate()
    {
        if count >= max_parameters {
            return Err(too_many());
        }
        let bad = |reason: &str| ApiError::BadRequest(format!("query parameter '{key}': {reason}"));
        match key.to_ascii_lowercase().as_str() {
            "limit" => {
                query.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=200).contains(l))
                    .ok_or_else(|| bad("must be from 1 to 200"))?;
            }
            "offset" => query.offset = value.parse().map_err(|_| bad("must be 0 or more"))?,
            "fuzzymatching" => {
                fuzzy = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("must be true or false")),
                }
            }
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field.eq_ignore_ascii_case("all") {
                        includes.all = true;
                    } else {
                        let tag = tag_of(field).ok_or_else(|| {
                            ApiError::BadRequest(format!(
                                "includefield '{field}' is not a known attribute"
                            ))
                        })?;
                        includes.tags.push(tag);
                        if includes.tags.len() > max_parameters {
                            return Err(too_many());
                        }
                    }
                }
            }
            _ => {
                let attribute = QueryAttribute::from_key(&key).ok_or_else(|| {
                    ApiError::BadRequest(format!("unknown or unsupported query attribute '{key}'"))
                })?;
                if level_rank(attribute.level()) > level_rank(level) {
                    return Err(ApiError::BadRequest(format!(
                        "attribute '{key}' cannot be matched in a search for this level"
                    )));
                }
                if value.is_empty() {
                    return Err(bad("empty values are not supported"));
                }
                raw_filters.push((attribute, value.into_owned()));
            }
        }
    }
    for (attribute, value) in raw_filters {
        let matcher = matcher(attribute, &value, fuzzy, limits).map_err(|reason| {
            ApiError::BadRequest(format!(
                "query attribute '{}': {reason}",
                attribute.keyword()
            ))
        })?;
        query.filters.push((attribute, matcher));
    }
    Ok((query, includes))
}

fn matcher(
    attribute: QueryAttribute,
    value: &str,
    fuzzy: bool,
    limits: &Limits,
) -> Result<Matcher, String> {
    // Null-padded values match with or without the padding (orig D.5): stored values are
    // indexed without it, so a query's padding is set aside too.
    let value = value.trim_end_matches('\0');
    match attribute.vr() {
        "UI" if value.contains([',', '\\']) => {
            let max = limits.max_uid_list_length as usize;
            let list: Vec<String> = value
                .split([',', '\\'])
                .take(max.saturating_add(1))
                .map(|v| v.trim().to_owned())
                .collect();
            if list.len() > max {
                return Err(format!(
                    "the UID list is longer than Tessera:Limits:MaxUidListLength ({max})"
                ));
            }
            for uid in &list {
                Uid::parse(uid).map_err(|e| e.to_string())?;
            }
            Ok(Matcher::UidList(list))
        }
        "UI" => Uid::parse(value)
            .map(|u| Matcher::Exact(u.to_string()))
            .map_err(|e| e.to_string()),
        "DA" => {
            let date = |d: &str| {
                if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(d.to_owned())
                } else {
                    Err(format!("'{d}' is not a date YYYYMMDD"))
                }
            };
            match value.split_once('-') {
                Some(("", "")) => Err("a range needs at least one end".into()),
                Some((from, to)) => Ok(Matcher::Range(
                    (!from.is_empty()).then(|| date(from)).transpose()?,
                    (!to.is_empty()).then(|| date(to)).transpose()?,
                )),
                None => date(value).map(Matcher::Exact),
            }
        }
        _ if value.contains(['*', '?']) => Ok(Matcher::Wildcard(value.to_owned())),
        "PN" if fuzzy => {
            let max = limits.max_fuzzy_name_words as usize;
            let words = value
                .split(|c: char| c.is_whitespace() || c == '^')
                .filter(|w| !w.is_empty())
                .count();
            if words > max {
                return Err(format!(
                    "the fuzzy name has more than Tessera:Limits:MaxFuzzyNameWords ({max}) words"
                ));
            }
            Ok(Matcher::Fuzzy(value.to_owned()))
        }
        _ => Ok(Matcher::Exact(value.to_owned())),
    }
}

/// A keyword or an 8-hex-digit tag, as a tag.
fn tag_of(field: &str) -> Option<String> {
    if field.len() == 8 && field.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(field.to_ascii_uppercase());
    }
    tessera_dicom::tag_of_keyword(field)
}

/// The attributes returned by default (orig D.5; v2's sets).
fn defaults(level: QueryLevel) -> &'static [QueryAttribute] {
    use QueryAttribute::*;
    match level {
        QueryLevel::Study => &[
            StudyDate,
            AccessionNumber,
            StudyDescription,
            ReferringPhysicianName,
            PatientName,
            PatientId,
            PatientBirthDate,
            StudyInstanceUid,
        ],
        QueryLevel::Series => &[
            Modality,
            ManufacturerModelName,
            SeriesInstanceUid,
            PerformedProcedureStepStartDate,
        ],
        QueryLevel::Instance => &[SopInstanceUid],
    }
}

/// Attributes v1 returns by default on top of v2's, and `includefield=all` adds; read from the
/// newest instance's metadata.
fn extras(level: QueryLevel, version: ApiVersion, all: bool) -> &'static [&'static str] {
    match (level, version, all) {
        (QueryLevel::Study, _, true) => &[
            "SpecificCharacterSet",
            "StudyTime",
            "TimezoneOffsetFromUTC",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "PatientSex",
            "StudyID",
            "ProcedureCodeSequence",
            "NameOfPhysiciansReadingStudy",
            "AdmittingDiagnosesDescription",
            "ReferencedStudySequence",
            "Occupation",
            "AdditionalPatientHistory",
            "AnatomicRegionsInStudyCodeSequence",
        ],
        (QueryLevel::Series, _, true) => &[
            "SpecificCharacterSet",
            "TimezoneOffsetFromUTC",
            "SeriesNumber",
            "Laterality",
            "SeriesDate",
            "SeriesTime",
            "SeriesDescription",
            "PerformedProcedureStepStartTime",
            "RequestAttributesSequence",
        ],
        (QueryLevel::Instance, _, true) => &[
            "SpecificCharacterSet",
            "SOPClassUID",
            "TimezoneOffsetFromUTC",
            "InstanceNumber",
            "Rows",
            "Columns",
            "BitsAllocated",
            "NumberOfFrames",
        ],
        (QueryLevel::Study, ApiVersion::V1, false) => &[
            "SpecificCharacterSet",
            "StudyTime",
            "TimezoneOffsetFromUTC",
            "PatientSex",
            "StudyID",
        ],
        (QueryLevel::Series, ApiVersion::V1, false) => &[
            "SpecificCharacterSet",
            "TimezoneOffsetFromUTC",
            "SeriesDescription",
            "PerformedProcedureStepStartTime",
            "RequestAttributesSequence",
        ],
        (QueryLevel::Instance, ApiVersion::V1, false) => &[
            "SpecificCharacterSet",
            "SOPClassUID",
            "InstanceNumber",
            "Rows",
            "Columns",
            "BitsAllocated",
            "NumberOfFrames",
        ],
        (_, ApiVersion::V2, false) => &[],
    }
}

fn element(vr: &str, value: &str) -> Value {
    if vr == "PN" {
        json!({"vr": vr, "Value": [{"Alphabetic": value}]})
    } else {
        json!({"vr": vr, "Value": [value]})
    }
}

async fn search(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    RawQuery(raw): RawQuery,
    level: QueryLevel,
    study: Option<Uid>,
    series: Option<Uid>,
) -> Result<Response, ApiError> {
    let (mut query, includes) = parse(raw.as_deref(), level, study, series, &state.limits)?;
    // Attributes from the index: defaults of the level and (for cross-level queries) of the
    // levels above, the matched ones, the scope's UIDs and what includefield names.
    let mut attributes: Vec<QueryAttribute> = Vec::new();
    for upper in [QueryLevel::Study, QueryLevel::Series, QueryLevel::Instance] {
        let cross = match upper {
            QueryLevel::Study => query.study.is_none(),
            QueryLevel::Series => query.series.is_none(),
            QueryLevel::Instance => true,
        };
        if level_rank(upper) == level_rank(level)
            || (level_rank(upper) < level_rank(level) && cross)
        {
            attributes.extend_from_slice(defaults(upper));
        }
    }
    attributes.extend(query.filters.iter().map(|(a, _)| *a));
    if query.study.is_some() {
        attributes.push(QueryAttribute::StudyInstanceUid);
    }
    if query.series.is_some() {
        attributes.push(QueryAttribute::SeriesInstanceUid);
    }
    let mut metadata_tags: Vec<String> = extras(level, version, includes.all)
        .iter()
        .filter_map(|k| tessera_dicom::tag_of_keyword(k))
        .collect();
    for tag in &includes.tags {
        match QueryAttribute::ALL.into_iter().find(|a| a.tag() == tag) {
            Some(attribute) => attributes.push(attribute),
            None => metadata_tags.push(tag.clone()),
        }
    }
    if includes.all {
        attributes.extend(
            QueryAttribute::ALL
                .into_iter()
                .filter(|a| level_rank(a.level()) <= level_rank(level)),
        );
    }
    let counts = |tag: &str| includes.all || includes.tags.iter().any(|t| t == tag);
    let study_level = level == QueryLevel::Study;
    let mut returned = attributes.clone();
    if study_level && counts(QueryAttribute::ModalitiesInStudy.tag()) {
        returned.push(QueryAttribute::ModalitiesInStudy);
    }
    query.fields = QidoFields {
        attributes: returned,
        sop_class_uid: level == QueryLevel::Instance && counts("00080016"),
        study_series: study_level && counts("00201206"),
        study_instances: study_level && counts("00201208"),
        series_instances: level == QueryLevel::Series && counts("00201209"),
        representative: !metadata_tags.is_empty(),
    };
    let rows = state.service.search(&query).await?;
    if rows.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut dataset = Map::new();
        for attribute in &attributes {
            if *attribute == QueryAttribute::ModalitiesInStudy {
                if !row.modalities_in_study.is_empty() {
                    dataset.insert(
                        attribute.tag().into(),
                        json!({"vr": "CS", "Value": row.modalities_in_study}),
                    );
                }
            } else if let Some(value) = row.value(*attribute) {
                dataset.insert(attribute.tag().into(), element(attribute.vr(), value));
            }
        }
        add_counts(&mut dataset, row, level, &counts);
        if let Some(json) = match row.representative {
            Some(watermark) => state.service.metadata_by_watermark(watermark).await?,
            None => None,
        } {
            let metadata: Value = serde_json::from_slice(&json).unwrap_or(Value::Null);
            for tag in &metadata_tags {
                if let Some(value) = metadata.get(tag) {
                    dataset.entry(tag.clone()).or_insert_with(|| value.clone());
                }
            }
        }
        out.push(Value::Object(dataset));
    }
    Ok((
        [(CONTENT_TYPE, "application/dicom+json")],
        Value::Array(out).to_string(),
    )
        .into_response())
}

fn add_counts(
    dataset: &mut Map<String, Value>,
    row: &QidoRow,
    level: QueryLevel,
    asked: &dyn Fn(&str) -> bool,
) {
    if level == QueryLevel::Study {
        for (tag, count) in [
            ("00201206", row.study_series),
            ("00201208", row.study_instances),
        ] {
            if let (true, Some(count)) = (asked(tag), count) {
                dataset.insert(tag.into(), json!({"vr": "IS", "Value": [count]}));
            }
        }
        if asked(QueryAttribute::ModalitiesInStudy.tag()) && !row.modalities_in_study.is_empty() {
            dataset.insert(
                "00080061".into(),
                json!({"vr": "CS", "Value": row.modalities_in_study}),
            );
        }
    }
    if let (true, Some(count)) = (
        level == QueryLevel::Series && asked("00201209"),
        row.series_instances,
    ) {
        dataset.insert("00201209".into(), json!({"vr": "IS", "Value": [count]}));
    }
    if let (QueryLevel::Instance, true, Some(class)) =
        (level, asked("00080016"), &row.sop_class_uid)
    {
        dataset.insert("00080016".into(), json!({"vr": "UI", "Value": [class]}));
    }
}
