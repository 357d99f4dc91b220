//! A request body read under `Tessera:Limits`: at most `MaxRequestBodyBytes` in all, and never
//! silent for longer than `BodyReadTimeout`. What stopped it is remembered, so the handler can
//! answer 413 or 408 after rolling back what it was storing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

/// Why a guarded body stopped early.
#[derive(Debug, Default)]
pub struct BodyGuard {
    too_large: AtomicBool,
    timed_out: AtomicBool,
}

impl BodyGuard {
    /// The body was longer than the limit.
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    /// The body sent nothing for longer than the timeout.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// Why the body stream failed.
#[derive(Debug, thiserror::Error)]
enum GuardError {
    #[error("the request body exceeds Tessera:Limits:MaxRequestBodyBytes ({0} bytes)")]
    TooLarge(u64),
    #[error("the request body sent nothing for Tessera:Limits:BodyReadTimeout ({0:?})")]
    TimedOut(Duration),
}

/// The body's bytes as a stream that fails past `max_bytes` or after `timeout` of silence.
pub fn guarded(
    body: Body,
    max_bytes: u64,
    timeout: Duration,
) -> (
    BoxStream<'static, Result<Bytes, axum::Error>>,
    Arc<BodyGuard>,
) {
    let guard = Arc::new(BodyGuard::default());
    let state = (body.into_data_stream(), 0u64, guard.clone(), false);
    let stream = futures::stream::unfold(
        state,
        move |(mut data, mut seen, guard, failed)| async move {
            if failed {
                return None;
            }
            let error = match tokio::time::timeout(timeout, data.next()).await {
                Ok(Some(Ok(chunk))) => {
                    seen = seen.saturating_add(chunk.len() as u64);
                    if seen <= max_bytes {
                        return Some((Ok(chunk), (data, seen, guard, false)));
                    }
                    guard.too_large.store(true, Ordering::Relaxed);
                    GuardError::TooLarge(max_bytes)
                }
                Ok(Some(Err(error))) => return Some((Err(error), (data, seen, guard, true))),
                Ok(None) => return None,
                Err(_) => {
                    guard.timed_out.store(true, Ordering::Relaxed);
                    GuardError::TimedOut(timeout)
                }
            };
            Some((Err(axum::Error::new(error)), (data, seen, guard, true)))
        },
    )
    .fuse()
    .boxed();
    (stream, guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_past_the_limit_fails_and_says_so() {
        let body = Body::from(vec![0u8; 100]);
        let (mut stream, guard) = guarded(body, 10, Duration::from_secs(5));
        assert!(stream.next().await.is_some_and(|r| r.is_err()));
        assert!(stream.next().await.is_none());
        assert!(guard.too_large());
        assert!(!guard.timed_out());
    }

    #[tokio::test]
    async fn a_silent_body_times_out() {
        let (_tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(rx);
        let (mut stream, guard) = guarded(body, 10, Duration::from_millis(50));
        assert!(stream.next().await.is_some_and(|r| r.is_err()));
        assert!(guard.timed_out());
    }
}
