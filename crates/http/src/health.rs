//! `GET /health/check`: whether the server can reach its blob store.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;

/// 200 with `{"status":"Healthy"}` when the blob store answers, 503 otherwise.
pub async fn check(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let probe = "tessera-health-probe".into();
    match state.blobs.containers().files.exists(&probe).await {
        Ok(_) => (StatusCode::OK, Json(json!({ "status": "Healthy" }))),
        Err(error) => {
            tracing::warn!(%error, "health check: blob store unreachable");
            let body = json!({ "status": "Unhealthy", "entries": { "blobStore": "unreachable" } });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }
    }
}
