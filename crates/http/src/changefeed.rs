//! The change feed (orig D.6): v1 sequence windows, v2 time windows with row paging, latest.

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_core::VersionedInstance;
use tessera_service::{ApiVersion, ChangeAction, ChangeFeedEntry, ChangeState, DicomService};

use crate::{ApiError, AppState};

/// Query parameters of `GET /changefeed` (both versions; each reads its own).
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct FeedQuery {
    /// v1: the exclusive starting sequence number; v2: rows to skip.
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// v1: width of the sequence window (1–100, default 10); v2: rows (1–200, default 100).
    limit: Option<i64>,
    /// v2: inclusive start of the time window.
    #[param(format = DateTime)]
    start_time: Option<String>,
    /// v2: exclusive end of the time window, after `startTime`.
    #[param(format = DateTime)]
    end_time: Option<String>,
    /// Whether entries carry the instance's metadata (default true; any case).
    #[serde(default, deserialize_with = "dotnet_bool")]
    include_metadata: Option<bool>,
}

/// A boolean as .NET's `bool.Parse` reads it, which the original's clients rely on
/// (`includeMetadata=True`): `true` or `false` in any case, surrounding white space ignored.
/// serde's own `bool` takes only lower case.
fn dotnet_bool<'de, D>(deserializer: D) -> Result<Option<bool>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(Some(true)),
        "false" => Ok(Some(false)),
        _ => Err(serde::de::Error::custom(format!(
            "'{}' is not a boolean (true or false)",
            text.chars().take(40).collect::<String>()
        ))),
    }
}

/// `GET /changefeed`.
#[utoipa::path(get, path = "/changefeed", tag = "Change feed", params(FeedQuery), responses((status = 200, description = "Change-feed entries", content_type = "application/json", body = serde_json::Value)))]
pub async fn feed(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Query(query): Query<FeedQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let offset = query.offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::BadRequest("offset must be 0 or more".into()));
    }
    let index = state.service.index();
    let entries = match version {
        ApiVersion::V1 => {
            let limit = bounded(query.limit, 10, 100)?;
            index.change_feed_by_sequence(offset, limit).await
        }
        ApiVersion::V2 => {
            let limit = bounded(query.limit, 100, 200)?;
            let start = query.start_time.as_deref().map(parse_time).transpose()?;
            let end = query.end_time.as_deref().map(parse_time).transpose()?;
            if let (Some(start), Some(end)) = (start, end)
                && start >= end
            {
                return Err(ApiError::BadRequest(
                    "startTime must be before endTime".into(),
                ));
            }
            index.change_feed_by_time(start, end, offset, limit).await
        }
    }
    .map_err(|e| ApiError::Service(e.into()))?;
    let include = query.include_metadata.unwrap_or(true);
    let mut out = Vec::with_capacity(entries.len());
    for entry in &entries {
        out.push(entry_json(&state.service, entry, version, include).await?);
    }
    Ok(Json(out))
}

/// `GET /changefeed/latest`.
#[utoipa::path(get, path = "/changefeed/latest", tag = "Change feed", params(FeedQuery), responses((status = 200, description = "The newest entry, or null", content_type = "application/json", body = serde_json::Value)))]
pub async fn latest(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Query(query): Query<FeedQuery>,
) -> Result<Json<Value>, ApiError> {
    let latest = state
        .service
        .index()
        .change_feed_latest()
        .await
        .map_err(|e| ApiError::Service(e.into()))?;
    match latest {
        Some(entry) => Ok(Json(
            entry_json(
                &state.service,
                &entry,
                version,
                query.include_metadata.unwrap_or(true),
            )
            .await?,
        )),
        None => Ok(Json(Value::Null)),
    }
}

fn bounded(value: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let value = value.unwrap_or(default);
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::BadRequest(format!(
            "limit must be from 1 to {max}"
        )))
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "'{text}' is not a date and time such as 2024-01-01T00:00:00Z"
            ))
        })
}

async fn entry_json(
    service: &DicomService,
    entry: &ChangeFeedEntry,
    version: ApiVersion,
    include_metadata: bool,
) -> Result<Value, ApiError> {
    let id = entry.instance.id();
    let mut value = json!({
        "sequence": entry.sequence,
        "studyInstanceUid": id.study.as_str(),
        "seriesInstanceUid": id.series.as_str(),
        "sopInstanceUid": id.sop.as_str(),
        "action": match entry.action { ChangeAction::Create => "create", ChangeAction::Delete => "delete" },
        "timestamp": entry.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "state": match entry.state { ChangeState::Current => "current", ChangeState::Replaced => "replaced", ChangeState::Deleted => "deleted" },
    });
    if version == ApiVersion::V2 {
        value["partitionName"] = json!("Microsoft.Default");
    }
    if let Some(current) = entry.current_watermark.filter(|_| include_metadata) {
        let instance = VersionedInstance::new(id.clone(), current);
        if let Ok(json) = service.blobs().get_metadata(&instance).await {
            value["metadata"] = serde_json::from_slice(&json).unwrap_or(Value::Null);
        }
    }
    Ok(value)
}
