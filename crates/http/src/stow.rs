//! STOW-RS: `POST /studies[/{study}]` (PS3.18 §10.5, orig D.4).

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, BoxStream, FuturesOrdered};
use futures::{FutureExt, StreamExt, future};
use serde_json::{Value, json};
use tessera_core::{Limits, Uid};
use tessera_service::{ApiVersion, DicomService, FailureReason, StoreOutcome};

use crate::public_url::BaseUrl;
use crate::related::{RelatedLimits, RelatedReader};
use crate::{ApiError, AppState, body, media};

/// `POST /studies`.
#[utoipa::path(post, path = "/studies", tag = "STOW-RS", request_body(content((String = "multipart/related"), (String = "application/dicom")), description = "multipart/related; type=\"application/dicom\" parts, or one application/dicom instance"), responses((status = 200, description = "All stored", content_type = "application/dicom+json", body = serde_json::Value), (status = 202, description = "Some stored, some failed or with warnings", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "The body had no parts"), (status = 409, description = "None stored", content_type = "application/dicom+json", body = serde_json::Value)))]
pub async fn store(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    store_request(state, version, None, base, headers, body).await
}

/// `POST /studies/{study}`: every instance must belong to that study.
#[utoipa::path(post, path = "/studies/{study}", tag = "STOW-RS", params(crate::openapi::StudyPath), request_body(content((String = "multipart/related"), (String = "application/dicom")), description = "multipart/related; type=\"application/dicom\" parts, or one application/dicom instance"), responses((status = 200, description = "All stored", content_type = "application/dicom+json", body = serde_json::Value), (status = 202, description = "Some stored, some failed or with warnings", content_type = "application/dicom+json", body = serde_json::Value), (status = 204, description = "The body had no parts"), (status = 409, description = "None stored", content_type = "application/dicom+json", body = serde_json::Value)))]
pub async fn store_in_study(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Path(study): Path<String>,
    BaseUrl(base): BaseUrl,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let study = parse_uid(&study, "StudyInstanceUID")?;
    store_request(state, version, Some(study), base, headers, body).await
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
    base: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let acceptable = media::accepted(&headers, None)
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
        .and_then(media::lenient_media_type)
        .ok_or_else(|| ApiError::UnsupportedMediaType("a Content-Type is required".into()))?;
    let body_kind = match (
        content_type.type_().as_str(),
        content_type.subtype().as_str(),
    ) {
        ("application", "dicom") => BodyKind::Single,
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
            if boundary.as_str().is_empty() || boundary.as_str().len() > 70 {
                return Err(ApiError::BadRequest(
                    "the multipart boundary must be 1 to 70 characters".into(),
                ));
            }
            BodyKind::Multipart {
                boundary: boundary.as_str().to_owned(),
                part_type: part_type.unwrap_or_else(|| "application/dicom".into()),
            }
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "expected multipart/related; type=\"application/dicom\" or application/dicom"
                    .into(),
            ));
        }
    };
    let limits = state.limits.clone();
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_request_body_bytes) {
        return Err(ApiError::PayloadTooLarge(format!(
            "the request body exceeds Tessera:Limits:MaxRequestBodyBytes ({} bytes)",
            limits.max_request_body_bytes
        )));
    }
    let permit = state.uploads.clone().try_acquire_owned().map_err(|_| {
        ApiError::Overloaded(format!(
            "more than Tessera:Limits:MaxConcurrentUploads ({}) uploads at once",
            limits.max_concurrent_uploads
        ))
    })?;
    let (stream, guard) = body::guarded(
        body,
        limits.max_request_body_bytes,
        limits.body_read_timeout,
    );
    // The store runs in a task of its own so that it finishes (and rolls back what a broken
    // body left) even when the client goes away and this request's future is dropped.
    let service = state.service.clone();
    let task_study = study.clone();
    let task = tokio::spawn(async move {
        let study = task_study;
        let _permit = permit;
        match body_kind {
            BodyKind::Single => {
                let outcome = service.store(stream, study.as_ref(), version).await;
                (vec![outcome], None)
            }
            BodyKind::Multipart {
                boundary,
                part_type,
            } => {
                let body = RelatedBody {
                    boundary: &boundary,
                    part_type: &part_type,
                };
                store_parts(&service, body, stream, &limits, study.as_ref(), version).await
            }
        }
    });
    let (mut outcomes, failure) = task
        .await
        .map_err(|e| ApiError::Internal(format!("a store task failed: {e}")))?;
    let failure = if guard.too_large() {
        Some(RequestFailure::TooLarge(format!(
            "the request body exceeds Tessera:Limits:MaxRequestBodyBytes ({} bytes)",
            state.limits.max_request_body_bytes
        )))
    } else if guard.timed_out() {
        Some(RequestFailure::TimedOut(format!(
            "the request body sent nothing for Tessera:Limits:BodyReadTimeout ({:?})",
            state.limits.body_read_timeout
        )))
    } else {
        failure
    };
    let Some(failure) = failure else {
        return Ok(response(&base, version, study.as_ref(), &outcomes, None));
    };
    let stored_any = outcomes
        .iter()
        .any(|o| matches!(o, StoreOutcome::Stored { .. }));
    if !stored_any {
        return Err(failure.into_error());
    }
    outcomes.push(StoreOutcome::Failed {
        sop_class_uid: None,
        sop_instance_uid: None,
        reason: FailureReason::ProcessingFailure,
        comment: failure.message().to_owned(),
        failed_attributes: Vec::new(),
    });
    Ok(response(
        &base,
        version,
        study.as_ref(),
        &outcomes,
        Some(failure.status()),
    ))
}

/// What a STOW body is.
enum BodyKind {
    Single,
    Multipart {
        boundary: String,
        /// The request's `type` parameter: the media type of a part that names none (RFC 2387
        /// §3.1 says so of the root part; the original applied it to every such part).
        part_type: String,
    },
}

/// How a multipart/related request body is framed.
struct RelatedBody<'a> {
    boundary: &'a str,
    part_type: &'a str,
}

/// Why the rest of a request could not be read (its parts before stand).
#[derive(Debug)]
enum RequestFailure {
    /// A limit of the multipart structure, or a malformed body.
    BadRequest(String),
    /// Past `MaxRequestBodyBytes`.
    TooLarge(String),
    /// Silent past `BodyReadTimeout`.
    TimedOut(String),
}

impl RequestFailure {
    fn message(&self) -> &str {
        match self {
            Self::BadRequest(m) | Self::TooLarge(m) | Self::TimedOut(m) => m,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn into_error(self) -> ApiError {
        match self {
            Self::BadRequest(m) => ApiError::BadRequest(m),
            Self::TooLarge(m) => ApiError::PayloadTooLarge(m),
            Self::TimedOut(m) => ApiError::RequestTimeout(m),
        }
    }
}

/// Parts up to this size are read whole and stored while the next parts are read, so the
/// durable writes of a batch overlap; a larger part streams to the blob store on its own.
const BUFFERED_PART_BYTES: usize = 1 << 20;

/// How many buffered parts of one request are stored at once: their reservations and
/// completions share group commits, and their folder fsyncs are shared too.
const PARTS_IN_FLIGHT: usize = 16;

/// How many bytes of buffered parts one request holds while they are stored (memory per
/// request stays under this plus one [`BUFFERED_PART_BYTES`], bytes the request brought).
const BYTES_IN_FLIGHT: usize = 4 << 20;

/// Stores the parts of a multipart/related body, small ones several at a time and in order of
/// their outcomes; stops at the first problem with the body itself.
async fn store_parts(
    service: &DicomService,
    framing: RelatedBody<'_>,
    body: BoxStream<'static, Result<Bytes, axum::Error>>,
    limits: &Limits,
    study: Option<&Uid>,
    version: ApiVersion,
) -> (Vec<StoreOutcome>, Option<RequestFailure>) {
    let related_limits = RelatedLimits {
        max_parts: limits.max_parts,
        max_part_header_bytes: limits.max_part_header_bytes,
        max_preamble_bytes: limits.max_preamble_bytes,
    };
    let mut reader = RelatedReader::new(body, framing.boundary, related_limits);
    let mut outcomes = Vec::new();
    // Each stored part's outcome, with the bytes it held.
    let mut in_flight = FuturesOrdered::new();
    let mut held = 0usize;
    let failure = loop {
        while in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some((outcome, bytes)) = in_flight.next().await {
                held = held.saturating_sub(bytes);
                outcomes.push(outcome);
            }
        }
        let headers = match reader.next_part().await {
            Ok(Some(headers)) => headers,
            Ok(None) => break None,
            Err(error) => break Some(RequestFailure::BadRequest(error.to_string())),
        };
        let part_type = headers.content_type.as_deref().unwrap_or(framing.part_type);
        let is_dicom = media::lenient_media_type(part_type)
            .is_some_and(|m| m.essence_str().eq_ignore_ascii_case("application/dicom"));
        if !is_dicom {
            let outcome = StoreOutcome::Failed {
                sop_class_uid: None,
                sop_instance_uid: None,
                reason: FailureReason::ValidationFailure,
                comment: "The part is not application/dicom.".into(),
                failed_attributes: Vec::new(),
            };
            in_flight.push_back(future::ready((outcome, 0)).boxed());
            continue;
        }
        let mut head = Vec::new();
        let mut buffered = 0usize;
        let whole = loop {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    buffered = buffered.saturating_add(chunk.len());
                    head.push(Ok(chunk));
                    if buffered > BUFFERED_PART_BYTES {
                        break false;
                    }
                }
                Ok(None) => break true,
                // The store reports the broken body; the failure ends the request below.
                Err(error) => {
                    head.push(Err(error));
                    break true;
                }
            }
        };
        if whole {
            while held.saturating_add(buffered) > BYTES_IN_FLIGHT {
                let Some((outcome, bytes)) = in_flight.next().await else {
                    break;
                };
                held = held.saturating_sub(bytes);
                outcomes.push(outcome);
            }
            held = held.saturating_add(buffered);
            // A task of its own, so that it goes on while this loop reads the next parts.
            let (service, study) = (service.clone(), study.cloned());
            let store = tokio::spawn(async move {
                service
                    .store(stream::iter(head), study.as_ref(), version)
                    .await
            });
            in_flight.push_back(
                async move {
                    let outcome = store.await.unwrap_or_else(|error| StoreOutcome::Failed {
                        sop_class_uid: None,
                        sop_instance_uid: None,
                        reason: FailureReason::ProcessingFailure,
                        comment: format!("the store of a part failed: {error}"),
                        failed_attributes: Vec::new(),
                    });
                    (outcome, buffered)
                }
                .boxed(),
            );
        } else {
            while let Some((outcome, _)) = in_flight.next().await {
                outcomes.push(outcome);
            }
            held = 0;
            let rest = stream::unfold(&mut reader, |reader| async move {
                match reader.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), reader)),
                    Ok(None) => None,
                    Err(error) => Some((Err(error), reader)),
                }
            });
            let part = stream::iter(head).chain(rest);
            outcomes.push(service.store(part, study, version).await);
        }
        if let Some(error) = reader.failure() {
            break Some(RequestFailure::BadRequest(error));
        }
    };
    while let Some((outcome, _)) = in_flight.next().await {
        outcomes.push(outcome);
    }
    (outcomes, failure)
}

/// FailedAttributesSequence (0074,1048): one item with an ErrorComment (0000,0902) per
/// comment; an empty sequence has no `Value` (PS3.18 §F.2.5).
fn failed_attributes_sequence(comments: &[String]) -> Value {
    if comments.is_empty() {
        return json!({"vr": "SQ"});
    }
    let items: Vec<Value> = comments
        .iter()
        .map(|c| json!({"00000902": {"vr": "LO", "Value": [c]}}))
        .collect();
    json!({"vr": "SQ", "Value": items})
}

/// The STOW response dataset and status (orig D.4).
fn response(
    base: &str,
    version: ApiVersion,
    study: Option<&Uid>,
    outcomes: &[StoreOutcome],
    status_override: Option<StatusCode>,
) -> Response {
    if outcomes.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
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
                // v2 answers every stored instance with its FailedAttributesSequence, empty
                // when nothing was wrong (as the original's clients expect).
                if version == ApiVersion::V2 {
                    item["00741048"] = failed_attributes_sequence(failed_attributes);
                }
                referenced.push(item);
            }
            StoreOutcome::Failed {
                sop_class_uid,
                sop_instance_uid,
                reason,
                comment,
                failed_attributes,
            } => {
                let mut item = json!({ "00081197": {"vr": "US", "Value": [*reason as u16]} });
                if let Some(class) = sop_class_uid {
                    item["00081150"] = json!({"vr": "UI", "Value": [class]});
                }
                if let Some(uid) = sop_instance_uid {
                    item["00081155"] = json!({"vr": "UI", "Value": [uid]});
                }
                // Both versions name the attributes that failed (the original did); v2 also
                // explains any other failure in the same sequence.
                if !failed_attributes.is_empty() {
                    item["00741048"] = failed_attributes_sequence(failed_attributes);
                } else if version == ApiVersion::V2 {
                    item["00741048"] = failed_attributes_sequence(std::slice::from_ref(comment));
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
    let stored = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            StoreOutcome::Stored { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let mut response = (
        status_override.unwrap_or(status),
        [(CONTENT_TYPE, "application/dicom+json")],
        Value::Object(dataset).to_string(),
    )
        .into_response();
    // For the audit line: which instances this request stored.
    response
        .extensions_mut()
        .insert(crate::security::StoredInstances(stored));
    response
}
