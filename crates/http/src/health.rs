//! Health: `GET /health/check` (the original's: whether the index and blob store answer),
//! `GET /health/live` (liveness: the process serves requests; no dependency is asked, so an
//! orchestrator never restarts a process because a store is down) and `GET /health/ready`
//! (readiness: the stores answer and the process is not shutting down, so a load balancer sends
//! it traffic).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;

/// 200 with `{"status":"Healthy"}` when the stores answer, 503 otherwise.
#[utoipa::path(get, path = "/health/check", tag = "Health", responses((status = 200, description = "Index and blob store answer", content_type = "application/json", body = serde_json::Value), (status = 503, description = "A store does not answer", content_type = "application/json", body = serde_json::Value)))]
pub async fn check(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if stores_answer(&state).await {
        (StatusCode::OK, Json(json!({ "status": "Healthy" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "Unhealthy" })),
        )
    }
}

/// Always 200 while the process answers HTTP.
#[utoipa::path(get, path = "/health/live", tag = "Health", responses((status = 200, description = "The process answers", content_type = "application/json", body = serde_json::Value)))]
pub async fn live() -> (StatusCode, Json<serde_json::Value>) {
    (StatusCode::OK, Json(json!({ "status": "Alive" })))
}

/// 200 when the stores answer and no shutdown has begun; 503 otherwise.
#[utoipa::path(get, path = "/health/ready", tag = "Health", responses((status = 200, description = "Ready for traffic", content_type = "application/json", body = serde_json::Value), (status = 503, description = "A store does not answer, or shutting down", content_type = "application/json", body = serde_json::Value)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.shutting_down.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "ShuttingDown" })),
        );
    }
    if stores_answer(&state).await {
        (StatusCode::OK, Json(json!({ "status": "Ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "Unavailable" })),
        )
    }
}

/// How long the stores get to answer a health probe. A store that cannot be reached is retried
/// by its client for minutes; a probe must answer within a load balancer's timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

async fn stores_answer(state: &AppState) -> bool {
    let probe = "tessera-health-probe".into();
    let blobs = state.service.blobs().containers().files.exists(&probe);
    let index = state.service.index().next_watermark();
    match tokio::time::timeout(PROBE_TIMEOUT, futures::future::join(blobs, index)).await {
        Ok((Ok(_), Ok(_))) => true,
        Ok((blobs, index)) => {
            tracing::warn!(blobs = ?blobs.err(), index = ?index.err(), "health check failed");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?PROBE_TIMEOUT, "health check failed: the stores did not answer in time");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
    use tessera_core::{FormatType, Limits};
    use tessera_service::{DicomService, ServiceSettings};
    use tower::ServiceExt;

    use crate::{AppState, PublicUrl, router};

    async fn status(app: &axum::Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readiness_fails_once_shutdown_begins_and_liveness_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("index.db").display());
        let index = tessera_index::InstanceIndex::open(&url).await.unwrap();
        let containers = BlobStoreLocation::Memory
            .open(None, &ContainerNames::default())
            .await
            .unwrap();
        let blobs = InstanceBlobStore::new(containers, FormatPolicy::new(FormatType::New));
        let service = DicomService::new(
            index,
            Arc::new(blobs),
            ServiceSettings {
                delete_delay: Duration::ZERO,
                limits: Limits::default(),
            },
        );
        let shutting_down = tokio_util::sync::CancellationToken::new();
        let state = AppState::new(service, Limits::default(), PublicUrl::default())
            .with_shutdown(shutting_down.clone());
        let app = router(state);
        assert_eq!(status(&app, "/health/ready").await, StatusCode::OK);
        assert_eq!(status(&app, "/health/live").await, StatusCode::OK);
        assert_eq!(
            status(&app, "/metrics").await,
            StatusCode::NOT_FOUND,
            "no recorder installed"
        );

        shutting_down.cancel();
        assert_eq!(
            status(&app, "/health/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status(&app, "/health/live").await, StatusCode::OK);
        assert_eq!(status(&app, "/health/check").await, StatusCode::OK);
    }
}
