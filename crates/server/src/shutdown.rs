//! Graceful shutdown: on SIGTERM or Ctrl-C the server stops accepting, requests in flight get
//! the grace period (`Tessera:ShutdownTimeout`) to finish and are then failed, and background
//! workers stop at their next checkpoint. A second signal fails the requests at once.

use std::time::Duration;

use tessera_core::Limits;
use tessera_http::Drain;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long requests failed at the end of the grace period get to return their 503.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Serves `app` until a signal, then drains it (see the module documentation). `stop` is
/// cancelled at the first signal, for the workers. Returns, once the server has stopped, the
/// instant the grace period ends (for the workers to finish by).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: &Limits,
    drain: Drain,
    stop: CancellationToken,
    grace: Duration,
) -> std::io::Result<Instant> {
    tokio::spawn({
        let (stop, drain) = (stop.clone(), drain.clone());
        async move {
            signal().await;
            tracing::info!(grace = ?grace, "shutting down: no new connections; requests in flight may finish");
            stop.cancel();
            signal().await;
            tracing::warn!("second signal: failing the requests in flight now");
            drain.abort();
        }
    });
    // The connection loop stops accepting at the first signal; the grace period and the failing
    // of late requests are handled here, so its own wait only bounds the very end.
    let server = tessera_http::serve(
        listener,
        app,
        limits,
        stop.clone().cancelled_owned(),
        grace + ABORT_WAIT + Duration::from_secs(1),
    );
    tokio::pin!(server);
    let deadline = tokio::select! {
        result = &mut server => {
            result?;
            return Ok(Instant::now());
        }
        deadline = async {
            stop.cancelled().await;
            let deadline = Instant::now() + grace;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = drain.idle() => {}
            }
            deadline
        } => deadline,
    };
    if drain.in_flight() > 0 {
        tracing::warn!(
            in_flight = drain.in_flight(),
            "grace period over: failing the requests still in flight"
        );
    }
    drain.abort();
    if tokio::time::timeout(ABORT_WAIT, drain.idle())
        .await
        .is_err()
    {
        tracing::warn!("requests did not stop in time");
    }
    // Connections still open only stream responses of reads; they end with the process.
    match tokio::time::timeout(Duration::from_secs(1), &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::info!("closing the connections still streaming responses"),
    }
    Ok(deadline)
}

/// Waits for the workers (already told to stop) until `deadline`, at least a few seconds, then
/// aborts those still running (their leases then expire as after a crash).
pub async fn join_workers(workers: Vec<JoinHandle<()>>, deadline: Instant) {
    let deadline = deadline.max(Instant::now() + Duration::from_secs(3));
    for mut worker in workers {
        if tokio::time::timeout_at(deadline, &mut worker)
            .await
            .is_err()
        {
            tracing::warn!("a background worker did not stop in time; aborting it");
            worker.abort();
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
