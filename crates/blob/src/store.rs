//! One container of blobs, create-only and streaming, over any `object_store` backend.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutPayload,
    WriteMultipart,
};

use crate::faults::{FaultInjectingStore, FaultInjector, FaultTally};
use crate::layout::STAGING_PREFIX;
use crate::{BlobError, BodyError};

/// Bodies up to this size are buffered and written with one atomic create-only put.
pub const DEFAULT_SINGLE_PUT_LIMIT: usize = 8 * 1024 * 1024;
/// Part size of multipart uploads for larger bodies.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// Local files up to this size are read with one call rather than streamed in 8 KiB reads.
const SMALL_LOCAL_READ: u64 = 1024 * 1024;
/// Parts of one upload in flight at once; with the part being filled, this bounds the memory
/// one upload uses to about `(MAX_PARTS_IN_FLIGHT + 1) × part size`.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// A stream of blob bytes, as read from a store.
pub type BlobStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// A blob opened for reading: its size is known before the first byte arrives.
pub struct BlobRead {
    /// Total length in bytes.
    pub size: u64,
    /// The bytes, in order, fetched as they are consumed.
    pub stream: BlobStream,
}

/// What a store knows about a blob without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// The blob's name within its container.
    pub name: Path,
    /// Length in bytes.
    pub size: u64,
    /// When the blob was last written.
    pub last_modified: DateTime<Utc>,
    /// The store's entity tag, where it has one.
    pub e_tag: Option<String>,
}

impl From<object_store::ObjectMeta> for BlobMeta {
    fn from(meta: object_store::ObjectMeta) -> Self {
        Self {
            name: meta.location,
            size: meta.size,
            last_modified: meta.last_modified,
            e_tag: meta.e_tag,
        }
    }
}

/// One container (Azure container, bucket prefix or folder) of a blob store.
///
/// Every write is create-only: writing a name that exists fails with
/// [`BlobError::AlreadyExists`] and leaves the existing blob as it was (the original overwrote
/// silently, orig G.20). Bodies stream: a small body is buffered and put atomically; a large one
/// goes through a multipart upload to a staging name and is then copied, create-only, to its
/// final name(s) — a hard link on a filesystem, a server-side copy in the cloud — so no reader
/// ever sees a partial blob under a final name.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    container: Arc<str>,
    single_put_limit: usize,
    part_size: usize,
    /// The container's folder when it is on a local filesystem.
    local: Option<LocalFolder>,
    /// The fault injector wrapped around `inner`, when tests asked for one.
    faults: Option<Arc<FaultInjector>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("container", &self.container)
            .field("store", &self.inner.to_string())
            .finish()
    }
}

impl BlobStore {
    /// Wraps an `object_store` backend already scoped to one container.
    pub fn new(inner: Arc<dyn ObjectStore>, container: &str) -> Self {
        Self {
            inner,
            container: container.into(),
            single_put_limit: DEFAULT_SINGLE_PUT_LIMIT,
            part_size: DEFAULT_PART_SIZE,
            local: None,
            faults: None,
        }
    }

    /// Routes every call through a [`FaultInjectingStore`] drawing from `faults` (tests only).
    pub fn with_faults(mut self, faults: Arc<FaultInjector>) -> Self {
        self.inner = Arc::new(FaultInjectingStore::new(self.inner, faults.clone()));
        if let Some(local) = &mut self.local {
            local.unsynced = Arc::new(FaultInjectingStore::new(
                local.unsynced.clone(),
                faults.clone(),
            ));
        }
        self.faults = Some(faults);
        self
    }

    /// The faults injected into this container's calls so far, if fault injection is on.
    pub fn fault_tally(&self) -> Option<FaultTally> {
        self.faults.as_ref().map(|faults| faults.tally())
    }

    /// Notes that the container is the folder `folder` of a local filesystem, which `unsynced`
    /// (a store on the same folder whose writes skip the per-file fsync) also reaches;
    /// `paths` maps blob names to the files of that folder.
    pub(crate) fn with_local_folder(
        mut self,
        folder: std::path::PathBuf,
        paths: Arc<LocalFileSystem>,
        unsynced: Arc<dyn ObjectStore>,
    ) -> Self {
        self.local = Some(LocalFolder {
            folder: folder.into(),
            paths,
            unsynced,
        });
        self
    }

    /// Starts a batch of create-only copies within this container that become durable together,
    /// at [`CopyBatch::sync`], rather than one by one.
    pub fn copy_batch(&self) -> CopyBatch {
        CopyBatch {
            store: self.clone(),
            touched: Mutex::new(BTreeSet::new()),
        }
    }

    /// Removes staging blobs older than `cutoff`: uploads a crash or a lost connection never
    /// finished. Returns how many it removed. (On Azure, uncommitted blocks expire by
    /// themselves; on S3, a bucket lifecycle rule should abort incomplete multipart uploads.)
    pub async fn sweep_staging(&self, cutoff: DateTime<Utc>) -> Result<usize, BlobError> {
        let prefix = Path::from(STAGING_PREFIX);
        let stale: Vec<BlobMeta> = self
            .list(Some(&prefix))
            .try_filter(|meta| futures::future::ready(meta.last_modified < cutoff))
            .try_collect()
            .await?;
        for meta in &stale {
            self.delete_if_exists(&meta.name).await?;
        }
        let mut removed = stale.len();
        if let Some(local) = &self.local {
            let staging = local.folder.join(STAGING_PREFIX);
            let cutoff = std::time::SystemTime::from(cutoff);
            for entry in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff);
                if old && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Changes the size at which uploads switch from one put to a staged multipart upload.
    /// Tests lower it to exercise the staged path with small bodies.
    pub fn with_upload_sizes(mut self, single_put_limit: usize, part_size: usize) -> Self {
        self.single_put_limit = single_put_limit;
        self.part_size = part_size.max(1);
        self
    }

    /// The container's name, for messages.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Writes `body` under `name`; fails if the name exists.
    pub async fn put_create(&self, name: &Path, body: Bytes) -> Result<(), BlobError> {
        let len = body.len();
        self.put_whole(std::slice::from_ref(name), PutPayload::from(body), len)
            .await
            .map(drop)
    }

    /// Streams `body` into the store under every name in `names` (Dual mode writes two) and
    /// returns its length. Create-only for each name: if any name exists, or the body or the
    /// store fails, the names this call created are removed again and nothing is left behind.
    pub async fn put_stream_create<S, E>(&self, names: &[Path], body: S) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BodyError>,
    {
        let mut body = pin!(body);
        let mut head = Vec::new();
        let mut buffered = 0usize;
        while buffered <= self.single_put_limit {
            match body.next().await {
                None => {
                    let payload = PutPayload::from_iter(head);
                    return self.put_whole(names, payload, buffered).await;
                }
                Some(Err(source)) => return Err(BlobError::Body(source.into())),
                Some(Ok(chunk)) => {
                    buffered += chunk.len();
                    head.push(chunk);
                }
            }
        }
        self.put_staged(names, head, body).await
    }

    async fn put_whole(
        &self,
        names: &[Path],
        payload: PutPayload,
        len: usize,
    ) -> Result<u64, BlobError> {
        // Every name at once (Dual writes two): each durable put waits on its own flushes.
        let puts = names.iter().map(|name| {
            self.inner
                .put_opts(name, payload.clone(), PutMode::Create.into())
        });
        let results = futures::future::join_all(puts).await;
        let mut created = Vec::with_capacity(names.len());
        let mut failure = None;
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(_) => created.push(name.clone()),
                Err(source) => failure = failure.or(Some(self.error(name, source))),
            }
        }
        match failure {
            Some(error) => {
                self.remove_created(&created).await;
                Err(error)
            }
            None => Ok(len as u64),
        }
    }

    async fn put_staged<S, E>(
        &self,
        names: &[Path],
        head: Vec<Bytes>,
        mut rest: std::pin::Pin<&mut S>,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BodyError>,
    {
        let staging = Path::from(format!("{STAGING_PREFIX}/{}", uuid::Uuid::new_v4()));
        let upload = self
            .inner
            .put_multipart(&staging)
            .await
            .map_err(|e| self.error(&staging, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut len = 0u64;
        for chunk in head {
            len += chunk.len() as u64;
            writer.put(chunk);
        }
        loop {
            let next = match writer.wait_for_capacity(MAX_PARTS_IN_FLIGHT).await {
                Err(source) => Err(self.error(&staging, source)),
                Ok(()) => match rest.next().await {
                    None => break,
                    Some(Ok(chunk)) => Ok(chunk),
                    Some(Err(source)) => Err(BlobError::Body(source.into())),
                },
            };
            match next {
                Ok(chunk) => {
                    len += chunk.len() as u64;
                    writer.put(chunk);
                }
                Err(error) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(container = %self.container, %staging, %abort, "could not abort a failed upload");
                    }
                    return Err(error);
                }
            }
        }
        writer.finish().await.map_err(|e| self.error(&staging, e))?;
        let published = self.publish(&staging, names, len).await;
        if let Err(error) = self.delete_if_exists(&staging).await {
            tracing::warn!(%error, "could not remove a staging blob; the sweeper will");
        }
        published.map(|()| len)
    }

    /// Copies a finished staging blob to its final names, create-only, and checks each copy's
    /// length (a cloud copy may complete asynchronously).
    async fn publish(&self, staging: &Path, names: &[Path], len: u64) -> Result<(), BlobError> {
        let mut created = Vec::with_capacity(names.len());
        for name in names {
            let copied = match self.copy_create(staging, name).await {
                Ok(()) => self.await_length(name, len).await,
                Err(error) => Err(error),
            };
            if let Err(error) = copied {
                if !matches!(error, BlobError::AlreadyExists { .. }) {
                    created.push(name.clone());
                }
                self.remove_created(&created).await;
                return Err(error);
            }
            created.push(name.clone());
        }
        Ok(())
    }

    async fn await_length(&self, name: &Path, len: u64) -> Result<(), BlobError> {
        let mut delay = Duration::from_millis(50);
        for _ in 0..8 {
            if self.head(name).await?.size == len {
                return Ok(());
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        Err(BlobError::Incomplete {
            container: self.container.to_string(),
            name: name.to_string(),
            expected: len,
        })
    }

    /// Removes names this process just created, after a later step of the same write failed.
    async fn remove_created(&self, created: &[Path]) {
        for name in created {
            if let Err(error) = self.delete_if_exists(name).await {
                tracing::error!(%error, "could not roll back a partial write; the sweeper will");
            }
        }
    }

    /// Copies `from` to `to` inside this container; fails if `to` exists.
    pub async fn copy_create(&self, from: &Path, to: &Path) -> Result<(), BlobError> {
        let options = CopyOptions::new().with_mode(CopyMode::Create);
        self.inner
            .copy_opts(from, to, options)
            .await
            .map_err(|e| self.error(to, e))
    }

    /// Opens a blob for streaming.
    pub async fn get(&self, name: &Path) -> Result<BlobRead, BlobError> {
        let result = self
            .inner
            .get(name)
            .await
            .map_err(|e| self.error(name, e))?;
        let size = result.meta.size;
        let (container, name) = (self.container.clone(), name.clone());
        // A local file streams in 8 KiB reads, each a hand-off to a blocking thread; a small one
        // (at most `SMALL_LOCAL_READ`, so memory stays bounded) is read with one.
        let whole = matches!(result.payload, GetResultPayload::File(..))
            && result.range.end.saturating_sub(result.range.start) <= SMALL_LOCAL_READ;
        let stream = if whole {
            futures::stream::once(result.bytes()).boxed()
        } else {
            result.into_stream()
        };
        let stream = stream
            .map_err(move |source| map_error(&container, &name, source))
            .boxed();
        Ok(BlobRead { size, stream })
    }

    /// Reads the whole blob; only for blobs known to be small (metadata, frame ranges).
    pub async fn get_bytes(&self, name: &Path) -> Result<Bytes, BlobError> {
        let result = self
            .inner
            .get(name)
            .await
            .map_err(|e| self.error(name, e))?;
        result.bytes().await.map_err(|e| self.error(name, e))
    }

    /// Reads `range` of a blob (frames are served this way).
    pub async fn get_range(&self, name: &Path, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.inner
            .get_range(name, range)
            .await
            .map_err(|e| self.error(name, e))
    }

    /// Size and version of a blob without reading it.
    pub async fn head(&self, name: &Path) -> Result<BlobMeta, BlobError> {
        self.inner
            .head(name)
            .await
            .map(BlobMeta::from)
            .map_err(|e| self.error(name, e))
    }

    /// Whether a blob exists.
    pub async fn exists(&self, name: &Path) -> Result<bool, BlobError> {
        match self.head(name).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes a blob; a missing blob is not an error.
    pub async fn delete_if_exists(&self, name: &Path) -> Result<(), BlobError> {
        match self.inner.delete(name).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.error(name, source)),
        }
    }

    /// Lists every blob under `prefix` (the whole container when `None`), in no set order.
    pub fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<BlobMeta, BlobError>> {
        let container = self.container.clone();
        let at = prefix.cloned().unwrap_or_default();
        self.inner
            .list(prefix)
            .map_ok(BlobMeta::from)
            .map_err(move |source| map_error(&container, &at, source))
            .boxed()
    }

    fn error(&self, name: &Path, source: object_store::Error) -> BlobError {
        map_error(&self.container, name, source)
    }
}

/// A container on a local filesystem: its folder, and a second store on it for batched copies.
#[derive(Clone)]
struct LocalFolder {
    /// Where unfinished multipart uploads are files `object_store` does not list.
    folder: Arc<std::path::Path>,
    /// Maps blob names to files exactly as the stores do.
    paths: Arc<LocalFileSystem>,
    /// The same folder without `with_fsync`: a copy (hard link) returns before its directory
    /// entry is on disk, and [`CopyBatch::sync`] makes the entries durable, once per folder.
    unsynced: Arc<dyn ObjectStore>,
}

/// Create-only copies within one container, made durable together by [`CopyBatch::sync`].
///
/// On a local filesystem a copy is a hard link to an existing, already durable file, so only
/// the directory entry is new; the durable store would fsync its folder after every link, which
/// caps a migration at a few thousand links per second. A batch links without that fsync,
/// remembers the folders whose entries changed (the new name's folder and those up to the
/// container's, in case the link created them), and fsyncs each of them once in `sync`. On
/// every other backend a copy is durable when it returns, and `sync` has nothing to do.
///
/// A copy in a batch is durable only once `sync` has returned: callers record it as done
/// (checkpoints, results) only after that.
pub struct CopyBatch {
    store: BlobStore,
    /// Folders whose entries this batch changed (or may have: see `copy_create`).
    touched: Mutex<BTreeSet<PathBuf>>,
}

impl CopyBatch {
    /// Copies `from` to `to`, create-only, like [`BlobStore::copy_create`]; durable after
    /// [`Self::sync`]. `to`'s folders are synced even when `to` already exists, since an earlier
    /// batch that was interrupted before its `sync` may have linked it.
    pub async fn copy_create(&self, from: &Path, to: &Path) -> Result<(), BlobError> {
        let Some(local) = &self.store.local else {
            return self.store.copy_create(from, to).await;
        };
        let file = local
            .paths
            .path_to_filesystem(to)
            .map_err(|e| self.store.error(to, e))?;
        {
            let mut touched = match self.touched.lock() {
                Ok(touched) => touched,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut folder = file.parent();
            while let Some(dir) = folder.filter(|dir| dir.starts_with(&*local.folder)) {
                touched.insert(dir.to_path_buf());
                folder = dir.parent();
            }
        }
        let options = CopyOptions::new().with_mode(CopyMode::Create);
        local
            .unsynced
            .copy_opts(from, to, options)
            .await
            .map_err(|e| self.store.error(to, e))
    }

    /// Makes every copy of the batch so far durable: fsyncs each folder whose entries changed,
    /// deepest first. Folders that no longer exist (emptied and removed since) have nothing left
    /// to sync. Calling it again syncs the same folders again, so a failed sync can be retried.
    pub async fn sync(&self) -> Result<(), BlobError> {
        let folders = match self.touched.lock() {
            Ok(folders) => folders.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if folders.is_empty() {
            return Ok(());
        }
        let container = self.store.container.clone();
        // `object_store` syncs a folder only inside each durable write, with no call to sync
        // one on its own; this is that fsync (`File::sync_all` on the opened folder).
        tokio::task::spawn_blocking(move || {
            for folder in folders.iter().rev() {
                let synced = std::fs::File::open(folder).and_then(|dir| dir.sync_all());
                match synced {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(BlobError::Store {
                            container: container.to_string(),
                            name: folder.display().to_string(),
                            source: object_store::Error::Generic {
                                store: "LocalFileSystem",
                                source: Box::new(error),
                            },
                        });
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|error| BlobError::Store {
            container: self.store.container.to_string(),
            name: String::new(),
            source: object_store::Error::JoinError { source: error },
        })?
    }
}

/// The one place `object_store` errors become [`BlobError`]s.
fn map_error(container: &str, name: &Path, source: object_store::Error) -> BlobError {
    let (container, name) = (container.to_owned(), name.to_string());
    match source {
        object_store::Error::NotFound { .. } => BlobError::NotFound { container, name },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            BlobError::AlreadyExists { container, name }
        }
        source => BlobError::Store {
            container,
            name,
            source,
        },
    }
}
