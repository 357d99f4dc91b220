//! `GET /metrics` in Prometheus's text format, and the per-request metrics of every route.
//!
//! Counters and histograms are recorded where things happen, through the `metrics` facade (the
//! blob store's calls in `tessera_blob::metered`, bytes stored and served in
//! `tessera_service::metrics`, requests here); a scrape renders them from the recorder the
//! server installed, after sampling what is a state rather than an event (uploads in flight, the
//! index pool, Old-name fallback reads, the background operations' counts).
//!
//! `/metrics` is not behind bearer tokens, like `/health/*`: scrapers rarely hold OpenID
//! Connect tokens, and no label carries a UID or anything else from a request's path (routes
//! are the matched templates). Restrict it at the network or the reverse proxy where needed.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tessera_service::OperationResults;

use crate::AppState;

/// Requests answered, by `method`, `route` (the matched template) and `status`.
pub const REQUESTS: &str = "tessera_http_requests_total";
/// Time to answer a request (until its response headers), by `method` and `route`.
pub const REQUEST_DURATION: &str = "tessera_http_request_duration_seconds";
/// STOW requests holding an upload permit now.
pub const UPLOADS_IN_FLIGHT: &str = "tessera_uploads_in_flight";
/// `Tessera:Limits:MaxConcurrentUploads`.
pub const UPLOADS_LIMIT: &str = "tessera_uploads_limit";
/// Connections the index pool holds.
pub const INDEX_POOL_CONNECTIONS: &str = "tessera_index_pool_connections";
/// Idle connections of the index pool.
pub const INDEX_POOL_IDLE: &str = "tessera_index_pool_idle_connections";
/// The most connections the index pool opens.
pub const INDEX_POOL_MAX: &str = "tessera_index_pool_max_connections";
/// Reads served from an Old name because the New one was missing.
pub const FALLBACK_READS: &str = "tessera_old_name_fallback_reads_total";
/// A background operation's instances processed so far, by `operation`.
pub const OPERATION_PROCESSED: &str = "tessera_operation_processed";
/// A background operation's instances to process, by `operation`.
pub const OPERATION_TOTAL: &str = "tessera_operation_total";
/// A background operation's instances that failed, by `operation`.
pub const OPERATION_FAILED: &str = "tessera_operation_failed";
/// 1 while a background operation is running, by `operation`.
pub const OPERATION_RUNNING: &str = "tessera_operation_running";

/// Latency buckets in seconds: from a cached metadata read to a large STOW.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The process's Prometheus recorder and what a scrape samples besides it.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    /// The configured background operations: (kind, id), e.g. `("copy", "1d46…")`; shared, as
    /// the handlers' state (this with it) is cloned for every request.
    operations: Arc<[(String, String)]>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("operations", &self.operations)
            .finish()
    }
}

/// The recorder could not be installed (one was installed already).
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct MetricsError(String);

impl Metrics {
    /// Installs the process-wide recorder; `operations` are the (kind, id) of the background
    /// operations whose counts a scrape reports. Call once per process.
    pub fn install(operations: Vec<(String, String)>) -> Result<Self, MetricsError> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
            .map_err(|e| MetricsError(e.to_string()))?
            .install_recorder()
            .map_err(|e| MetricsError(e.to_string()))?;
        describe();
        Ok(Self {
            handle,
            operations: operations.into(),
        })
    }

    /// Drains the histograms' buffers; the server calls this every few seconds so memory stays
    /// bounded between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The `# HELP` lines of every metric Tessera records.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use tessera_blob::metered;
    use tessera_service::metrics as service;
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, until its response headers"
    );
    describe_gauge!(UPLOADS_IN_FLIGHT, "STOW requests being stored now");
    describe_gauge!(UPLOADS_LIMIT, "Tessera:Limits:MaxConcurrentUploads");
    describe_gauge!(INDEX_POOL_CONNECTIONS, "Connections the index pool holds");
    describe_gauge!(INDEX_POOL_IDLE, "Idle connections of the index pool");
    describe_gauge!(INDEX_POOL_MAX, "The most connections the index pool opens");
    describe_counter!(
        FALLBACK_READS,
        "Reads served from an Old blob name because the New one was missing"
    );
    describe_gauge!(
        OPERATION_PROCESSED,
        "Instances a background operation processed"
    );
    describe_gauge!(
        OPERATION_TOTAL,
        "Instances a background operation has to process"
    );
    describe_gauge!(
        OPERATION_FAILED,
        "Instances a background operation failed on"
    );
    describe_gauge!(OPERATION_RUNNING, "1 while a background operation runs");
    describe_counter!(
        metered::CALLS,
        "Calls to the blob store, by backend and operation"
    );
    describe_counter!(
        metered::ERRORS,
        "Failed calls to the blob store (not counting not-found and already-exists answers)"
    );
    describe_counter!(
        metered::BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes written to the blob store"
    );
    describe_counter!(
        metered::BYTES_READ,
        Unit::Bytes,
        "Bytes read from the blob store"
    );
    describe_counter!(service::INSTANCES_STORED, "Instances stored");
    describe_counter!(
        service::BYTES_STORED,
        Unit::Bytes,
        "Bytes of the instances stored"
    );
    describe_counter!(
        service::BYTES_SERVED,
        Unit::Bytes,
        "Bytes handed to WADO responses, by kind"
    );
    describe_counter!(
        service::CLEANUP_REMOVALS,
        "Blob removals of deleted instances, by outcome"
    );
}

/// Route layer: counts each request by method, matched route and status, and times it.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The methods the routes serve, and `other` for any other, so a client cannot add labels.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "Metrics", responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String), (status = 404, description = "Metrics are turned off")))]
pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    let Some(metrics) = state.metrics.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let limit = state.limits.max_concurrent_uploads;
    let free = u32::try_from(state.uploads.available_permits()).unwrap_or(u32::MAX);
    metrics::gauge!(UPLOADS_IN_FLIGHT).set(f64::from(limit.saturating_sub(free)));
    metrics::gauge!(UPLOADS_LIMIT).set(f64::from(limit));
    let pool = state.service.index().pool_usage();
    metrics::gauge!(INDEX_POOL_CONNECTIONS).set(f64::from(pool.size));
    metrics::gauge!(INDEX_POOL_IDLE).set(f64::from(pool.idle));
    metrics::gauge!(INDEX_POOL_MAX).set(f64::from(pool.max));
    metrics::counter!(FALLBACK_READS).absolute(state.service.blobs().fallback_reads());
    for (kind, id) in metrics.operations.iter() {
        match state.service.operation(id).await {
            Ok(Some(record)) => {
                let results = OperationResults::parse(&record.results);
                let running = record.status == tessera_service::OperationStatus::Running;
                let label = kind.clone();
                metrics::gauge!(OPERATION_PROCESSED, "operation" => label.clone())
                    .set(results.processed as f64);
                metrics::gauge!(OPERATION_TOTAL, "operation" => label.clone())
                    .set(results.total as f64);
                metrics::gauge!(OPERATION_FAILED, "operation" => label.clone())
                    .set(results.failed as f64);
                metrics::gauge!(OPERATION_RUNNING, "operation" => label).set(if running {
                    1.0
                } else {
                    0.0
                });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, operation = %kind, "metrics: cannot read the operation")
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.handle.render(),
    )
        .into_response()
}
