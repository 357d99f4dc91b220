//! Requests in flight at shutdown: they are counted, so the server can wait for them within its
//! grace period, and failed cleanly (503, `Retry-After`) when the grace period ends. A failed
//! request's handler is dropped; the reservations of unfinished stores are released by the
//! process when it unregisters.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The requests in flight, and the signal that fails them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    abort: CancellationToken,
    requests: TaskTracker,
}

impl Drain {
    /// Nothing in flight yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails every request in flight (and any that still arrives) with 503.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// How many requests are in flight.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        self.requests.close();
        self.requests.wait().await;
    }
}

/// `router` with every request counted by `drain` and failed when it aborts.
pub fn with_drain(router: Router, drain: Drain) -> Router {
    router.layer(axum::middleware::from_fn_with_state(drain, guard))
}

async fn guard(State(drain): State<Drain>, request: Request, next: Next) -> Response {
    let _in_flight = drain.requests.token();
    let aborted = std::pin::pin!(drain.abort.cancelled());
    let response = std::pin::pin!(next.run(request));
    match futures::future::select(aborted, response).await {
        Either::Left(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "the server is shutting down",
        )
            .into_response(),
        Either::Right((response, _)) => response,
    }
}
