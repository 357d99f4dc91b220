//! Tessera's HTTP surface: DICOMweb on `/v1` and `/v2` (STOW-RS, WADO-RS, DELETE, change
//! feed) and `/health/check`. It is the only crate that knows HTTP and the wire JSON; the use
//! cases below it return domain values and typed errors, which [`ApiError`] maps to statuses in
//! one place.

mod changefeed;
mod delete;
mod drain;
mod error;
mod health;
mod media;
mod multipart;
mod operations;
mod qido;
mod stow;
mod wado;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use tessera_service::{ApiVersion, DicomService};

pub use drain::{Drain, with_drain};
pub use error::ApiError;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The DICOMweb use cases.
    pub service: DicomService,
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/check", get(health::check))
        .nest("/v1", versioned(ApiVersion::V1))
        .nest("/v2", versioned(ApiVersion::V2))
        // Bodies stream to the blob store; no size limit applies to them as a whole.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
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
        .route(&format!("{study}/metadata"), get(wado::study_metadata))
        .route(series, get(wado::series).delete(delete::series))
        .route(&format!("{series}/metadata"), get(wado::series_metadata))
        .route(instance, get(wado::instance).delete(delete::instance))
        .route(
            &format!("{instance}/metadata"),
            get(wado::instance_metadata),
        )
        .route(&format!("{instance}/frames/{{frames}}"), get(wado::frames))
        .route("/changefeed", get(changefeed::feed))
        .route("/changefeed/latest", get(changefeed::latest))
        .route("/operations/{id}", get(operations::status))
        .layer(axum::Extension(version))
}
