//! STOW-RS: `POST /studies[/{study}]` (PS3.18 §10.5, orig D.4).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::{Value, json};
use tessera_core::Uid;
use tessera_service::{ApiVersion, FailureReason, StoreOutcome};

use crate::{ApiError, AppState, media};

/// `POST /studies`.
pub async fn store(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    store_request(state, version, None, headers, body).await
}

/// `POST /studies/{study}`: every instance must belong to that study.
pub async fn store_in_study(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Path(study): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let study = parse_uid(&study, "StudyInstanceUID")?;
    store_request(state, version, Some(study), headers, body).await
}

/// A UID from the URL, or 400.
pub fn parse_uid(value: &str, name: &str) -> Result<Uid, ApiError> {
    Uid::parse(value)
        .map_err(|e| ApiError::BadRequest(format!("{name} in the URL is not valid: {e}")))
}

async fn store_request(
    state: AppState,
    version: ApiVersion,
    study: Option<Uid>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let acceptable = media::accepted(&headers)
        .into_iter()
        .any(|requested| match requested {
            None => true,
            Some(r) => {
                !r.multipart
                    && matches!(
                        r.part_type.as_str(),
                        "application/dicom+json" | "application/json"
                    )
            }
        });
    if !acceptable {
        return Err(ApiError::NotAcceptable(
            "STOW responses are application/dicom+json".into(),
        ));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
        .ok_or_else(|| ApiError::UnsupportedMediaType("a Content-Type is required".into()))?;
    let service = &state.service;
    let mut outcomes = Vec::new();
    match (
        content_type.type_().as_str(),
        content_type.subtype().as_str(),
    ) {
        ("application", "dicom") => {
            outcomes.push(
                service
                    .store(body.into_data_stream(), study.as_ref(), version)
                    .await,
            );
        }
        ("multipart", "related") => {
            let part_type = content_type
                .get_param("type")
                .map(|t| t.as_str().to_ascii_lowercase());
            if part_type
                .as_deref()
                .is_some_and(|t| t != "application/dicom")
            {
                return Err(ApiError::UnsupportedMediaType(
                    "multipart/related parts must be application/dicom".into(),
                ));
            }
            let boundary = content_type
                .get_param(mime::BOUNDARY)
                .ok_or_else(|| ApiError::BadRequest("the multipart body has no boundary".into()))?;
            let mut multipart = multer::Multipart::new(body.into_data_stream(), boundary.as_str());
            loop {
                match multipart.next_field().await {
                    Ok(Some(field)) => {
                        let is_dicom = field.content_type().is_none_or(|t| {
                            t.essence_str().eq_ignore_ascii_case("application/dicom")
                        });
                        if !is_dicom {
                            outcomes.push(StoreOutcome::Failed {
                                sop_class_uid: None,
                                sop_instance_uid: None,
                                reason: FailureReason::ValidationFailure,
                                comment: "The part is not application/dicom.".into(),
                            });
                            continue;
                        }
                        let stream = field.map_err(std::io::Error::other);
                        outcomes.push(service.store(stream, study.as_ref(), version).await);
                    }
                    Ok(None) => break,
                    Err(error) if outcomes.is_empty() => {
                        return Err(ApiError::BadRequest(format!(
                            "the multipart body is malformed: {error}"
                        )));
                    }
                    Err(error) => {
                        // Parts already read stand; the rest of the body cannot be read.
                        outcomes.push(StoreOutcome::Failed {
                            sop_class_uid: None,
                            sop_instance_uid: None,
                            reason: FailureReason::ProcessingFailure,
                            comment: format!("the multipart body is malformed: {error}"),
                        });
                        break;
                    }
                }
            }
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected multipart/related; type=\"application/dicom\" or application/dicom"
                    .into(),
            ));
        }
    }
    let stored = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            StoreOutcome::Stored { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let mut response = response(&headers, version, study.as_ref(), &outcomes);
    response
        .extensions_mut()
        .insert(crate::security::StoredInstances(stored));
    Ok(response)
}

/// The STOW response dataset and status (orig D.4).
fn response(
    headers: &HeaderMap,
    version: ApiVersion,
    study: Option<&Uid>,
    outcomes: &[StoreOutcome],
) -> Response {
    if outcomes.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    let base = base_url(headers, version);
    let mut referenced = Vec::new();
    let mut failed = Vec::new();
    for outcome in outcomes {
        match outcome {
            StoreOutcome::Stored {
                id,
                sop_class_uid,
                warnings,
                failed_attributes,
            } => {
                let url = format!(
                    "{base}/studies/{}/series/{}/instances/{}",
                    id.study, id.series, id.sop
                );
                let mut item = json!({
                    "00081150": {"vr": "UI", "Value": [sop_class_uid]},
                    "00081155": {"vr": "UI", "Value": [id.sop.as_str()]},
                    "00081190": {"vr": "UR", "Value": [url]},
                });
                if !warnings.is_empty() {
                    let codes: Vec<u16> = warnings.iter().map(|w| *w as u16).collect();
                    item["00081196"] = json!({"vr": "US", "Value": codes});
                }
                if version == ApiVersion::V2 && !failed_attributes.is_empty() {
                    let comments: Vec<Value> = failed_attributes
                        .iter()
                        .map(|c| json!({"00000902": {"vr": "LO", "Value": [c]}}))
                        .collect();
                    item["00741048"] = json!({"vr": "SQ", "Value": comments});
                }
                referenced.push(item);
            }
            StoreOutcome::Failed {
                sop_class_uid,
                sop_instance_uid,
                reason,
                comment,
            } => {
                let mut item = json!({ "00081197": {"vr": "US", "Value": [*reason as u16]} });
                if let Some(class) = sop_class_uid {
                    item["00081150"] = json!({"vr": "UI", "Value": [class]});
                }
                if let Some(uid) = sop_instance_uid {
                    item["00081155"] = json!({"vr": "UI", "Value": [uid]});
                }
                if version == ApiVersion::V2 {
                    item["00741048"] = json!({"vr": "SQ", "Value": [{"00000902": {"vr": "LO", "Value": [comment]}}]});
                }
                failed.push(item);
            }
        }
    }
    let mut dataset = serde_json::Map::new();
    if let Some(study) = study.filter(|_| !referenced.is_empty()) {
        dataset.insert(
            "00081190".into(),
            json!({"vr": "UR", "Value": [format!("{base}/studies/{study}")]}),
        );
    }
    let any_warning = outcomes
        .iter()
        .any(|o| matches!(o, StoreOutcome::Stored { warnings, .. } if !warnings.is_empty()));
    let status = match (referenced.is_empty(), failed.is_empty()) {
        (true, _) => StatusCode::CONFLICT,
        (false, false) => StatusCode::ACCEPTED,
        (false, true) if version == ApiVersion::V2 && any_warning => StatusCode::ACCEPTED,
        (false, true) => StatusCode::OK,
    };
    if !failed.is_empty() {
        dataset.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
    }
    if !referenced.is_empty() {
        dataset.insert("00081199".into(), json!({"vr": "SQ", "Value": referenced}));
    }
    (
        status,
        [(CONTENT_TYPE, "application/dicom+json")],
        Value::Object(dataset).to_string(),
    )
        .into_response()
}

/// `http[s]://host/v{n}` as the client addressed the server.
pub fn base_url(headers: &HeaderMap, version: ApiVersion) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    let version = match version {
        ApiVersion::V1 => "v1",
        ApiVersion::V2 => "v2",
    };
    format!("{scheme}://{host}/{version}")
}
