//! Fault injection for tests: an `object_store` wrapper that fails calls, delays them and cuts
//! read streams, deterministically from a seed, so that tests can show every request still
//! succeeds or fails cleanly when the blob store misbehaves (in the spirit of object_store's
//! `ThrottledStore` and `LimitStore`).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};

/// What to inject. All zero (the default) injects nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultInjection {
    /// Fraction of calls (0..=1) that fail with a transient-looking error. A failing call that
    /// changes the store fails before reaching it or, half the time, after it succeeded (a
    /// lost response), which is the harder case for the caller.
    pub failure_rate: f64,
    /// Each call waits a random time up to this long first.
    pub latency: Duration,
    /// Fraction of reads (0..=1) whose byte stream breaks with an error at a random byte.
    pub cut_stream_rate: f64,
    /// Seed of the fault sequence: the same seed and the same order of calls give the same
    /// faults.
    pub seed: u64,
}

impl FaultInjection {
    /// Whether this injects anything at all.
    pub fn is_active(&self) -> bool {
        self.failure_rate > 0.0 || self.cut_stream_rate > 0.0 || !self.latency.is_zero()
    }
}

/// How many faults were injected so far, for test reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultTally {
    /// Calls that went through the wrapper.
    pub calls: u64,
    /// Calls failed before they reached the store.
    pub failed_before: u64,
    /// Calls that reached the store and succeeded, but were reported as failed.
    pub failed_after: u64,
    /// Read streams cut short with an error.
    pub cut_streams: u64,
}

impl fmt::Display for FaultTally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls, {} failed before the store, {} failed after it, {} read streams cut",
            self.calls, self.failed_before, self.failed_after, self.cut_streams
        )
    }
}

/// The shared state of one fault sequence: the configuration, the draw counter and the tally.
/// One injector serves every container of a process, so one seed describes the whole run.
#[derive(Debug)]
pub struct FaultInjector {
    config: FaultInjection,
    draws: AtomicU64,
    calls: AtomicU64,
    failed_before: AtomicU64,
    failed_after: AtomicU64,
    cut_streams: AtomicU64,
}

/// What happens to one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Succeed,
    FailBefore,
    FailAfter,
}

impl FaultInjector {
    /// A fresh sequence for `config`.
    pub fn new(config: FaultInjection) -> Arc<Self> {
        Arc::new(Self {
            config,
            draws: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failed_before: AtomicU64::new(0),
            failed_after: AtomicU64::new(0),
            cut_streams: AtomicU64::new(0),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &FaultInjection {
        &self.config
    }

    /// The faults injected so far.
    pub fn tally(&self) -> FaultTally {
        FaultTally {
            calls: self.calls.load(Ordering::Relaxed),
            failed_before: self.failed_before.load(Ordering::Relaxed),
            failed_after: self.failed_after.load(Ordering::Relaxed),
            cut_streams: self.cut_streams.load(Ordering::Relaxed),
        }
    }

    /// The next number of the sequence (splitmix64 over seed and draw count).
    fn draw(&self) -> u64 {
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut z = self
            .config
            .seed
            .wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `rate`.
    fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && ((self.draw() >> 11) as f64) / ((1u64 << 53) as f64) < rate
    }

    /// A number in `0..bound` (`bound` > 0).
    fn below(&self, bound: u64) -> u64 {
        self.draw() % bound
    }

    /// Counts a call, waits its latency and decides its fate.
    async fn enter(&self, operation: &str, location: &Path, changes_store: bool) -> Fate {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.config.latency.as_micros();
        if latency > 0 {
            let micros = self.below(u64::try_from(latency).unwrap_or(u64::MAX));
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
        if !self.chance(self.config.failure_rate) {
            return Fate::Succeed;
        }
        let fate = if changes_store && self.below(2) == 1 {
            Fate::FailAfter
        } else {
            Fate::FailBefore
        };
        tracing::info!(
            target: "tessera_blob::faults",
            operation,
            %location,
            after = fate == Fate::FailAfter,
            "injected fault"
        );
        fate
    }

    fn error(&self, fate: Fate, operation: &str, location: &Path) -> object_store::Error {
        let counter = match fate {
            Fate::FailAfter => &self.failed_after,
            _ => &self.failed_before,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        injected(format!(
            "{operation} of {location}: connection reset by peer"
        ))
    }

    /// Runs `call` with the fate drawn for it.
    async fn apply<T>(
        &self,
        operation: &str,
        location: &Path,
        changes_store: bool,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.enter(operation, location, changes_store).await {
            Fate::Succeed => call.await,
            Fate::FailBefore => Err(self.error(Fate::FailBefore, operation, location)),
            Fate::FailAfter => {
                call.await?;
                Err(self.error(Fate::FailAfter, operation, location))
            }
        }
    }

    /// Where to cut a read of `len` bytes, if this read is to be cut.
    fn cut_point(&self, len: u64) -> Option<u64> {
        (len > 0 && self.chance(self.config.cut_stream_rate)).then(|| self.below(len))
    }
}

/// An injected error: `Generic`, as a network failure of a real backend would be.
fn injected(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultInjection",
        source: format!("injected fault (transient): {message}").into(),
    }
}

/// An `ObjectStore` that injects the faults of its [`FaultInjector`] into every call to the
/// store it wraps.
#[derive(Debug)]
pub struct FaultInjectingStore {
    inner: Arc<dyn ObjectStore>,
    faults: Arc<FaultInjector>,
}

impl FaultInjectingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, faults: Arc<FaultInjector>) -> Self {
        Self { inner, faults }
    }
}

impl fmt::Display for FaultInjectingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultInjectingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultInjectingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.faults
            .apply(
                "put",
                location,
                true,
                self.inner.put_opts(location, payload, opts),
            )
            .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self
            .faults
            .apply(
                "start upload",
                location,
                false,
                self.inner.put_multipart_opts(location, opts),
            )
            .await?;
        Ok(Box::new(FaultInjectingUpload {
            upload,
            location: location.clone(),
            faults: self.faults.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let mut result = self
            .faults
            .apply(
                "get",
                location,
                false,
                self.inner.get_opts(location, options),
            )
            .await?;
        if head {
            return Ok(result);
        }
        let Some(at) = self.faults.cut_point(result.range.end - result.range.start) else {
            return Ok(result);
        };
        tracing::info!(target: "tessera_blob::faults", %location, at, "injected fault: read stream cut");
        self.faults.cut_streams.fetch_add(1, Ordering::Relaxed);
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = std::mem::take(&mut result.attributes);
        let extensions = std::mem::take(&mut result.extensions);
        let stream = cut_stream(result.into_stream(), at, location.clone());
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
            extensions,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, faults) = (self.inner.clone(), self.faults.clone());
        locations
            .then(move |location| {
                let (inner, faults) = (inner.clone(), faults.clone());
                async move {
                    let location = location?;
                    let delete = async {
                        let one = futures::stream::iter([Ok(location.clone())]).boxed();
                        inner
                            .delete_stream(one)
                            .next()
                            .await
                            .unwrap_or_else(|| Ok(location.clone()))
                    };
                    faults.apply("delete", &location, true, delete).await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let (inner, faults) = (self.inner.clone(), self.faults.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let at = prefix.clone().unwrap_or_default();
            match faults.enter("list", &at, false).await {
                Fate::Succeed => inner.list(prefix.as_ref()),
                fate => futures::stream::iter([Err(faults.error(fate, "list", &at))]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.faults
            .apply("list", &at, false, self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.faults
            .apply("copy", to, true, self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.faults
            .apply(
                "rename",
                to,
                true,
                self.inner.rename_opts(from, to, options),
            )
            .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.faults
            .apply(
                "get ranges",
                location,
                false,
                self.inner.get_ranges(location, ranges),
            )
            .await
    }
}

/// `stream` with only its first `at` bytes, then an injected error.
fn cut_stream(
    stream: BoxStream<'static, Result<Bytes>>,
    at: u64,
    location: Path,
) -> BoxStream<'static, Result<Bytes>> {
    let cut_error = move || injected(format!("read of {location} cut after {at} bytes"));
    futures::stream::unfold(Some((stream, at)), move |state| {
        let cut_error = cut_error.clone();
        async move {
            let (mut stream, remaining) = state?;
            if remaining == 0 {
                return Some((Err(cut_error()), None));
            }
            match stream.try_next().await {
                Err(error) => Some((Err(error), None)),
                Ok(None) => None,
                Ok(Some(chunk)) => {
                    let keep = usize::try_from(remaining).unwrap_or(usize::MAX);
                    if chunk.len() < keep {
                        let left = remaining - chunk.len() as u64;
                        Some((Ok(chunk), Some((stream, left))))
                    } else {
                        Some((Ok(chunk.slice(..keep)), Some((stream, 0))))
                    }
                }
            }
        }
    })
    .boxed()
}

/// A multipart upload whose parts and completion may fail.
#[derive(Debug)]
struct FaultInjectingUpload {
    upload: Box<dyn MultipartUpload>,
    location: Path,
    faults: Arc<FaultInjector>,
}

#[async_trait]
impl MultipartUpload for FaultInjectingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let put = self.upload.put_part(data);
        let (faults, location) = (self.faults.clone(), self.location.clone());
        Box::pin(async move { faults.apply("upload part", &location, true, put).await })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let faults = self.faults.clone();
        faults
            .apply(
                "complete upload",
                &self.location,
                true,
                self.upload.complete(),
            )
            .await
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutMode};

    fn wrapped(config: FaultInjection) -> (FaultInjectingStore, Arc<FaultInjector>) {
        let faults = FaultInjector::new(config);
        let store = FaultInjectingStore::new(Arc::new(InMemory::new()), faults.clone());
        (store, faults)
    }

    fn body(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    #[tokio::test]
    async fn rate_zero_is_transparent() {
        let (store, faults) = wrapped(FaultInjection::default());
        let name = Path::from("a/b.dcm");
        store.put(&name, body(10_000).into()).await.expect("put");
        let read = store
            .get(&name)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(read, body(10_000));
        assert_eq!(
            store.get_range(&name, 10..20).await.expect("range"),
            body(10_000).slice(10..20)
        );
        assert_eq!(store.head(&name).await.expect("head").size, 10_000);
        let listed: Vec<_> = store.list(None).try_collect().await.expect("list");
        assert_eq!(listed.len(), 1);
        store.delete(&name).await.expect("delete");
        assert!(matches!(
            store.head(&name).await,
            Err(object_store::Error::NotFound { .. })
        ));
        let tally = faults.tally();
        assert!(tally.calls >= 6);
        assert_eq!(
            (tally.failed_before, tally.failed_after, tally.cut_streams),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn the_same_seed_gives_the_same_faults() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let (store, _) = wrapped(FaultInjection {
                failure_rate: 0.3,
                seed,
                ..FaultInjection::default()
            });
            let mut outcomes = Vec::new();
            for i in 0..200 {
                let name = Path::from(format!("n{i}"));
                outcomes.push(store.put(&name, body(10).into()).await.is_ok());
            }
            outcomes
        }
        assert_eq!(outcomes(7).await, outcomes(7).await);
        assert_ne!(outcomes(7).await, outcomes(8).await);
    }

    #[tokio::test]
    async fn fails_about_the_chosen_fraction_and_some_after_the_store_changed() {
        let (store, faults) = wrapped(FaultInjection {
            failure_rate: 0.1,
            seed: 42,
            ..FaultInjection::default()
        });
        let mut failed = 0u64;
        let mut kept_despite_error = 0u64;
        for i in 0..2_000 {
            let name = Path::from(format!("n{i}"));
            let put = store
                .put_opts(&name, body(10).into(), PutMode::Create.into())
                .await;
            if let Err(error) = put {
                assert!(error.to_string().contains("injected fault (transient)"));
                failed += 1;
                let inner = store.inner.head(&name).await;
                kept_despite_error += u64::from(inner.is_ok());
            }
        }
        assert!((140..=260).contains(&failed), "{failed} of 2000 failed");
        assert!(kept_despite_error > 0 && kept_despite_error < failed);
        let tally = faults.tally();
        assert_eq!(tally.failed_before + tally.failed_after, failed);
        assert_eq!(tally.failed_after, kept_despite_error);
    }

    #[tokio::test]
    async fn cut_streams_end_in_an_error_after_a_strict_prefix() {
        let (store, faults) = wrapped(FaultInjection {
            cut_stream_rate: 1.0,
            seed: 3,
            ..FaultInjection::default()
        });
        let name = Path::from("big");
        store
            .inner
            .put(&name, body(100_000).into())
            .await
            .expect("put");
        for _ in 0..20 {
            let mut stream = store.get(&name).await.expect("get").into_stream();
            let mut received = Vec::new();
            let error = loop {
                match stream.next().await {
                    Some(Ok(chunk)) => received.extend_from_slice(&chunk),
                    Some(Err(error)) => break error,
                    None => panic!("a cut stream must not end cleanly"),
                }
            };
            assert!(error.to_string().contains("cut after"));
            assert!(received.len() < 100_000);
            assert_eq!(&received[..], &body(100_000)[..received.len()]);
        }
        assert!(store.get_range(&name, 0..1000).await.is_err());
        assert_eq!(faults.tally().cut_streams, 21);
    }

    #[tokio::test]
    async fn latency_delays_calls() {
        let (store, _) = wrapped(FaultInjection {
            latency: Duration::from_millis(20),
            seed: 1,
            ..FaultInjection::default()
        });
        let started = std::time::Instant::now();
        for i in 0..20 {
            store
                .put(&Path::from(format!("n{i}")), body(1).into())
                .await
                .expect("put");
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn multipart_uploads_and_deletes_fail_too() {
        let (store, faults) = wrapped(FaultInjection {
            failure_rate: 0.5,
            seed: 11,
            ..FaultInjection::default()
        });
        let mut outcomes = Vec::new();
        for i in 0..40 {
            let name = Path::from(format!("up{i}"));
            let uploaded = async {
                let mut upload = store.put_multipart(&name).await?;
                upload.put_part(body(100).into()).await?;
                upload.put_part(body(100).into()).await?;
                upload.complete().await
            };
            outcomes.push(uploaded.await.is_ok());
            outcomes.push(store.delete(&name).await.is_ok());
        }
        assert!(outcomes.iter().any(|ok| *ok) && outcomes.iter().any(|ok| !ok));
        assert!(faults.tally().failed_before > 0 && faults.tally().failed_after > 0);
    }
}
