//! `DELETE` of a study, series or instance (orig D.7): 204, or 404 when nothing matched.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use tessera_core::InstanceIdentifier;
use tessera_service::RetrieveScope;

use crate::stow::parse_uid;
use crate::{ApiError, AppState};

/// `DELETE /studies/{study}`.
#[utoipa::path(delete, path = "/studies/{study}", tag = "Delete", params(crate::openapi::StudyPath), responses((status = 204, description = "Deleted")))]
pub async fn study(
    State(state): State<AppState>,
    Path(study): Path<String>,
) -> Result<StatusCode, ApiError> {
    let scope = RetrieveScope::Study(parse_uid(&study, "StudyInstanceUID")?);
    delete(state, scope).await
}

/// `DELETE /studies/{study}/series/{series}`.
#[utoipa::path(delete, path = "/studies/{study}/series/{series}", tag = "Delete", params(crate::openapi::SeriesPath), responses((status = 204, description = "Deleted")))]
pub async fn series(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = RetrieveScope::Series(
        parse_uid(&study, "StudyInstanceUID")?,
        parse_uid(&series, "SeriesInstanceUID")?,
    );
    delete(state, scope).await
}

/// `DELETE /studies/{study}/series/{series}/instances/{instance}`.
#[utoipa::path(delete, path = "/studies/{study}/series/{series}/instances/{instance}", tag = "Delete", params(crate::openapi::InstancePath), responses((status = 204, description = "Deleted")))]
pub async fn instance(
    State(state): State<AppState>,
    Path((study, series, sop)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = RetrieveScope::Instance(InstanceIdentifier {
        study: parse_uid(&study, "StudyInstanceUID")?,
        series: parse_uid(&series, "SeriesInstanceUID")?,
        sop: parse_uid(&sop, "SOPInstanceUID")?,
    });
    delete(state, scope).await
}

async fn delete(state: AppState, scope: RetrieveScope) -> Result<StatusCode, ApiError> {
    state.service.delete(&scope).await?;
    Ok(StatusCode::NO_CONTENT)
}
