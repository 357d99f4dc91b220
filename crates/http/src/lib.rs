//! Tessera's HTTP surface. It is the only crate that knows HTTP and the wire JSON; everything
//! below it speaks in domain types and typed errors, which [`ApiError`] maps to statuses in one
//! place.
//!
//! For now it serves `/health/check`; the DICOMweb routes (`/v1`, `/v2`) build on it.

mod error;
mod health;

use std::sync::Arc;

use axum::Router;
use tessera_blob::InstanceBlobStore;

pub use error::ApiError;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The FormatType-aware blob store.
    pub blobs: Arc<InstanceBlobStore>,
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/check", axum::routing::get(health::check))
        .with_state(state)
}
