//! Tessera's HTTP surface: DICOMweb on `/v1` and `/v2` (STOW-RS, WADO-RS, DELETE, change
//! feed), `/health/check`, `/health/live`, `/health/ready` and `/metrics`. It is the only crate that knows HTTP and the wire JSON; the use
//! cases below it return domain values and typed errors, which [`ApiError`] maps to statuses in
//! one place.

mod body;
mod changefeed;
mod cors;
mod delete;
mod drain;
mod error;
mod health;
mod media;
mod metrics;
mod multipart;
mod openapi;
mod operations;
mod public_url;
mod qido;
mod related;
mod rendered;
mod security;
mod serve;
mod stow;
mod wado;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tessera_core::Limits;
use tessera_service::{ApiVersion, DicomService};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use cors::{Cors, CorsPolicy, InvalidCors};
pub use drain::{Drain, with_drain};
pub use error::ApiError;
pub use metrics::{Metrics, MetricsError};
pub use public_url::{LocalAddr, PublicUrl};
pub use security::{AUDIT_TARGET, Security};
pub use serve::serve;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The DICOMweb use cases.
    pub service: DicomService,
    /// What one request may make the server hold, read or compute.
    pub limits: Arc<Limits>,
    /// Permits for concurrent uploads (`Tessera:Limits:MaxConcurrentUploads`).
    pub uploads: Arc<Semaphore>,
    /// How RetrieveURL and `Location` are built.
    pub public_url: Arc<PublicUrl>,
    /// Authentication, authorization and audit of the DICOMweb routes.
    pub security: Security,
    /// The Prometheus recorder `/metrics` renders; without it `/metrics` is 404.
    pub metrics: Option<Metrics>,
    /// Cancelled when the process begins to shut down: readiness then fails.
    pub shutting_down: CancellationToken,
    /// Which browser origins may call (off unless configured).
    pub cors: Cors,
}

impl AppState {
    /// The state of a server over `service` under `limits`.
    pub fn new(service: DicomService, limits: Limits, public_url: PublicUrl) -> Self {
        Self {
            service,
            uploads: Arc::new(Semaphore::new(limits.max_concurrent_uploads as usize)),
            limits: Arc::new(limits),
            public_url: Arc::new(public_url),
            security: Security::default(),
            metrics: None,
            shutting_down: CancellationToken::new(),
            cors: Cors::default(),
        }
    }

    /// The same state with `/metrics` rendering `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
    }

    /// The same state with readiness failing once `shutting_down` is cancelled.
    pub fn with_shutdown(self, shutting_down: CancellationToken) -> Self {
        Self {
            shutting_down,
            ..self
        }
    }

    /// The same state with `cors` answering browsers' cross-origin requests.
    pub fn with_cors(self, cors: Cors) -> Self {
        Self { cors, ..self }
    }

    /// The same state with `security` guarding the DICOMweb routes.
    pub fn with_security(self, security: Security) -> Self {
        Self { security, ..self }
    }
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    let cors = state.cors.layer();
    let (router, _) = routes(state.security.clone()).split_for_parts();
    let router = router
        // After routing, so the matched template (never the raw path) labels the request.
        .route_layer(axum::middleware::from_fn(metrics::track))
        // Bodies stream to the blob store; STOW applies Tessera:Limits:MaxRequestBodyBytes.
        .layer(DefaultBodyLimit::disable())
        .with_state(state);
    // Outermost, so preflights never reach the security middleware or a route's method filter.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Metadata is JSON that compresses about tenfold; gzip when the client accepts it.
/// The OpenAPI 3 document of every route ([`openapi::document`]), as served at `/openapi.json`.
pub fn openapi_json() -> String {
    openapi::document_json()
}

/// The route table: each handler with its OpenAPI entry (`#[utoipa::path]`), so the router and
/// the document are built from one list.
fn routes(security: Security) -> OpenApiRouter<AppState> {
    let guard = axum::middleware::from_fn_with_state(security, security::guard);
    OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(health::check))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::scrape))
        .routes(routes!(openapi::serve))
        .nest("/v1", versioned(ApiVersion::V1).layer(guard.clone()))
        .nest("/v2", versioned(ApiVersion::V2).layer(guard))
}

fn versioned(version: ApiVersion) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(qido::studies, stow::store))
        .routes(routes!(qido::all_series))
        .routes(routes!(qido::all_instances))
        .routes(routes!(qido::study_series))
        .routes(routes!(qido::study_instances))
        .routes(routes!(qido::series_instances))
        .routes(routes!(wado::study, stow::store_in_study, delete::study))
        .routes(routes!(wado::series, delete::series))
        .routes(routes!(wado::instance, delete::instance))
        .routes(routes!(wado::frames))
        .routes(routes!(wado::bulk_data))
        .routes(routes!(rendered::study))
        .routes(routes!(rendered::series))
        .routes(routes!(rendered::instance))
        .routes(routes!(rendered::frames))
        .routes(routes!(rendered::study_thumbnail))
        .routes(routes!(rendered::series_thumbnail))
        .routes(routes!(rendered::instance_thumbnail))
        .routes(routes!(rendered::frame_thumbnail))
        // Metadata is gzip-compressed when the client accepts it.
        .merge(
            OpenApiRouter::new()
                .routes(routes!(wado::study_metadata))
                .routes(routes!(wado::series_metadata))
                .routes(routes!(wado::instance_metadata))
                .layer(tower_http::compression::CompressionLayer::new().gzip(true)),
        )
        .routes(routes!(changefeed::feed))
        .routes(routes!(changefeed::latest))
        .routes(routes!(operations::status))
        .layer(axum::Extension(version))
}
