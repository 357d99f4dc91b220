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
use axum::routing::get;
use tessera_core::Limits;
use tessera_service::{ApiVersion, DicomService};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

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
    let guard = axum::middleware::from_fn_with_state(state.security.clone(), security::guard);
    let cors = state.cors.layer();
    let router = Router::new()
        .route("/health/check", get(health::check))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::scrape))
        .nest("/v1", versioned(ApiVersion::V1).layer(guard.clone()))
        .nest("/v2", versioned(ApiVersion::V2).layer(guard))
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
fn compressed<S: Clone + Send + Sync + 'static>(
    route: axum::routing::MethodRouter<S>,
) -> axum::routing::MethodRouter<S> {
    route.layer(tower_http::compression::CompressionLayer::new().gzip(true))
}

fn versioned(version: ApiVersion) -> Router<AppState> {
    let study = "/studies/{study}";
    let series = "/studies/{study}/series/{series}";
    let instance = "/studies/{study}/series/{series}/instances/{instance}";
    Router::new()
        .route("/studies", get(qido::studies).post(stow::store))
        .route("/series", get(qido::all_series))
        .route("/instances", get(qido::all_instances))
        .route(&format!("{study}/series"), get(qido::study_series))
        .route(&format!("{study}/instances"), get(qido::study_instances))
        .route(&format!("{series}/instances"), get(qido::series_instances))
        .route(
            study,
            get(wado::study)
                .post(stow::store_in_study)
                .delete(delete::study),
        )
        .route(
            &format!("{study}/metadata"),
            compressed(get(wado::study_metadata)),
        )
        .route(series, get(wado::series).delete(delete::series))
        .route(
            &format!("{series}/metadata"),
            compressed(get(wado::series_metadata)),
        )
        .route(instance, get(wado::instance).delete(delete::instance))
        .route(
            &format!("{instance}/metadata"),
            compressed(get(wado::instance_metadata)),
        )
        .route(&format!("{instance}/frames/{{frames}}"), get(wado::frames))
        .route(
            &format!("{instance}/bulkdata/{{tag}}"),
            get(wado::bulk_data),
        )
        .route(&format!("{study}/rendered"), get(rendered::study))
        .route(&format!("{series}/rendered"), get(rendered::series))
        .route(&format!("{instance}/rendered"), get(rendered::instance))
        .route(
            &format!("{instance}/frames/{{frames}}/rendered"),
            get(rendered::frames),
        )
        .route(
            &format!("{study}/thumbnail"),
            get(rendered::study_thumbnail),
        )
        .route(
            &format!("{series}/thumbnail"),
            get(rendered::series_thumbnail),
        )
        .route(
            &format!("{instance}/thumbnail"),
            get(rendered::instance_thumbnail),
        )
        .route(
            &format!("{instance}/frames/{{frames}}/thumbnail"),
            get(rendered::frame_thumbnail),
        )
        .route("/changefeed", get(changefeed::feed))
        .route("/changefeed/latest", get(changefeed::latest))
        .route("/operations/{id}", get(operations::status))
        .layer(axum::Extension(version))
}
