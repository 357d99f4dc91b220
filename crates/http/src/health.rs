//! `GET /health/check`: whether the server can reach its index and blob store.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;

/// 200 with `{"status":"Healthy"}` when the stores answer, 503 otherwise.
pub async fn check(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let probe = "tessera-health-probe".into();
    let blobs = state
        .service
        .blobs()
        .containers()
        .files
        .exists(&probe)
        .await;
    let index = state.service.index().next_watermark().await;
    match (blobs, index) {
        (Ok(_), Ok(_)) => (StatusCode::OK, Json(json!({ "status": "Healthy" }))),
        (blobs, index) => {
            tracing::warn!(blobs = ?blobs.err(), index = ?index.err(), "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "Unhealthy" })),
            )
        }
    }
}
