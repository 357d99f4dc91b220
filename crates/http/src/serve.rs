//! The connection loop: hyper under the router with the connection timeouts of
//! `Tessera:Limits`, and a graceful stop.
//!
//! axum's own `serve` sets no timeouts, so a client that sends half a request, or keeps an idle
//! connection, holds a task and a socket forever. Here hyper's header read timeout bounds how
//! long a request's headers may take; a connection with no request in flight and no byte moving
//! for `KeepAliveTimeout` is closed (and dropped if it does not close by itself within another
//! such period); request bodies are bounded by `BodyReadTimeout` where they are read.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tessera_core::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::LocalAddr;

/// When a connection last moved a byte, and how many requests it has in flight.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// How long, and for how many bytes, a closed connection still reads what its client sends.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024 * 1024;

/// A socket that records when bytes move, and closes lingering: an answer sent before the
/// request body was read (a refused upload) would otherwise be lost to the TCP reset that
/// closing a socket with unread bytes sends.
struct ActivityIo {
    inner: Option<TcpStream>,
    activity: Arc<Activity>,
}

impl ActivityIo {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for ActivityIo {
    fn drop(&mut self) {
        let (Some(mut stream), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.shutdown().await;
            let mut buffer = vec![0u8; 64 * 1024];
            let mut discarded = 0;
            let deadline = tokio::time::Instant::now() + LINGER;
            while discarded < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
                    Ok(Ok(n)) if n > 0 => discarded += n,
                    _ => break,
                }
            }
        });
    }
}

impl AsyncRead for ActivityIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        };
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    /// Vectored, so hyper queues body chunks and writes them with their framing in one
    /// `writev` (a socket that is not vectored makes hyper copy every body byte into its buffer).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = match self.stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets requests
/// in flight finish for up to `grace`, and returns (what still runs is then cut).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses go out at once instead of waiting on Nagle's algorithm and the
        // client's delayed acknowledgement (about 40 ms per response otherwise).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let local = stream.local_addr().ok();
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(ActivityIo {
            inner: Some(stream),
            activity: activity.clone(),
        });
        connections.spawn(connection(
            io,
            router.clone(),
            local,
            activity,
            limits.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "the shutdown grace period ended with requests still running; they are cut"
        );
    }
    Ok(())
}

async fn connection(
    io: TokioIo<ActivityIo>,
    router: Router,
    local: Option<SocketAddr>,
    activity: Arc<Activity>,
    limits: Limits,
    stop: CancellationToken,
) {
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let in_flight = InFlight::begin(&requests);
        if let Some(local) = local {
            request.extensions_mut().insert(LocalAddr(local));
        }
        let response = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = response.await;
            drop(in_flight);
            response
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        // A client may shut its side down once the request is sent and still await the answer.
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keep_alive_timeout))
        .keep_alive_timeout(limits.keep_alive_timeout);
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    let idle_limit = limits.keep_alive_timeout;
    let mut ticks = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(100)));
    let mut closing = false;
    let mut closing_since = Instant::now();
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                closing_since = Instant::now();
            }
            _ = ticks.tick() => {
                let idle = activity.requests.load(Ordering::Relaxed) == 0
                    && activity.idle_for() >= idle_limit;
                if closing && stop.is_cancelled() {
                    continue;
                }
                if closing && closing_since.elapsed() >= idle_limit {
                    tracing::debug!("dropping a connection that did not close");
                    return;
                }
                if idle && !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    closing_since = Instant::now();
                }
            }
        }
    }
}
