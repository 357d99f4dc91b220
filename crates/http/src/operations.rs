//! `GET /operations/{id}` (orig C), which also shows the migration operations (orig G.11).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tessera_service::{ApiVersion, OperationResults, OperationStatus, ServiceError};

use crate::public_url::BaseUrl;
use crate::{ApiError, AppState};

/// 202 with `Location` while running, 200 once ended, 404 when unknown.
#[utoipa::path(get, path = "/operations/{id}", tag = "Operations", params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$", description = "The operation id (a GUID)")), responses((status = 200, description = "The operation has ended", content_type = "application/json", body = serde_json::Value), (status = 202, description = "The operation is running", content_type = "application/json", body = serde_json::Value)))]
pub async fn status(
    State(state): State<AppState>,
    Extension(version): Extension<ApiVersion>,
    Path(id): Path<String>,
    BaseUrl(base): BaseUrl,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::BadRequest(format!("'{id}' is not an operation id (a GUID)")))?
        .simple()
        .to_string();
    let record = state
        .service
        .operation(&id)
        .await?
        .ok_or(ApiError::Service(ServiceError::NotFound("operation")))?;
    let results = OperationResults::parse(&record.results);
    let succeeded = record.status == OperationStatus::Succeeded;
    let status = match (record.status, version) {
        (OperationStatus::Succeeded, ApiVersion::V1) => "completed",
        (status, _) => status.as_str(),
    };
    let body = json!({
        "operationId": record.id,
        "type": record.kind,
        "createdTime": record.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "lastUpdatedTime": record.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "status": status,
        "percentComplete": results.percent_complete(succeeded),
        "results": {
            "processed": results.processed,
            "copied": results.copied,
            "alreadyPresent": results.already_present,
            "verified": results.verified,
            "deleted": results.deleted,
            "skipped": results.skipped,
            "failed": results.failed,
            "errors": results.errors,
        },
    });
    let running = matches!(
        record.status,
        OperationStatus::Running | OperationStatus::NotStarted
    );
    let mut response = (
        if running {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if running {
        let location = format!("{}/operations/{}", base, record.id);
        if let Ok(value) = location.parse() {
            response.headers_mut().insert(LOCATION, value);
        }
    }
    Ok(response)
}
