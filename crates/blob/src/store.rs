//! One container of blobs, create-only and streaming, over any `object_store` backend.

use std::ops::Range;
use std::pin::pin;
use std::sync::Arc;
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
/// Parts of one upload in flight at once; with the part being filled, this bounds the memory
/// one upload uses to about `(MAX_PARTS_IN_FLIGHT + 1) × part size`.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Chunk size of reads from a local file. object_store's own `GetResult::into_stream` reads
/// 8 KiB per blocking task, so a 132 KB instance cost 17 thread hand-offs, which dominated the
/// CPU of a WADO retrieve; a response holds at most two chunks (one sent, one read ahead).
const LOCAL_READ_CHUNK: u64 = 1024 * 1024;

/// A container that is a folder of a local filesystem.
#[derive(Clone)]
struct LocalContainer {
    /// The folder; unfinished multipart uploads are files in it that `object_store` does not
    /// list.
    folder: Arc<std::path::Path>,
    /// The backend, which maps blob names to paths.
    files: Arc<LocalFileSystem>,
    /// The `backend` label of its metrics.
    backend: &'static str,
}

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
    /// The container when it is a folder of a local filesystem.
    local: Option<LocalContainer>,
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
        self.faults = Some(faults);
        self
    }

    /// The faults injected into this container's calls so far, if fault injection is on.
    pub fn fault_tally(&self) -> Option<FaultTally> {
        self.faults.as_ref().map(|faults| faults.tally())
    }

    /// Notes that the container is the folder `folder` of a local filesystem, which `files`
    /// (the backend inside `inner`'s metrics) maps names into.
    pub(crate) fn with_local_folder(
        mut self,
        folder: std::path::PathBuf,
        files: Arc<LocalFileSystem>,
        backend: &'static str,
    ) -> Self {
        self.local = Some(LocalContainer {
            folder: folder.into(),
            files,
            backend,
        });
        self
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
        if let Some(LocalContainer { folder, .. }) = &self.local {
            let staging = folder.join(STAGING_PREFIX);
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
        if let (Some(local), None) = (&self.local, &self.faults) {
            return self.get_local(local, name).await;
        }
        let result = self
            .inner
            .get(name)
            .await
            .map_err(|e| self.error(name, e))?;
        let size = result.meta.size;
        let (container, name) = (self.container.clone(), name.clone());
        let stream = match result.payload {
            GetResultPayload::File(file, _) => local_file_stream(file, result.range),
            GetResultPayload::Stream(stream) => stream,
        }
        .map_err(move |source| map_error(&container, &name, source))
        .boxed();
        Ok(BlobRead { size, stream })
    }

    /// Opens a local file and reads its first chunk in one blocking task (through object_store,
    /// opening and reading are two tasks, each a thread hand-off that cost about as much CPU
    /// as serving a small instance's bytes); the rest streams as [`local_file_stream`] reads it.
    async fn get_local(&self, local: &LocalContainer, name: &Path) -> Result<BlobRead, BlobError> {
        let path = local
            .files
            .path_to_filesystem(name)
            .map_err(|e| self.error(name, e))?;
        let opened = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = std::fs::File::open(&path)?;
            let metadata = file.metadata()?;
            if !metadata.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a file",
                ));
            }
            let size = metadata.len();
            let first = size.min(LOCAL_READ_CHUNK);
            let mut chunk = Vec::with_capacity(usize::try_from(first).unwrap_or(0));
            (&mut file).take(first).read_to_end(&mut chunk)?;
            Ok((file, size, chunk))
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        let result = opened.map_err(|source| {
            let kind = source.kind();
            let source = if kind == std::io::ErrorKind::NotFound {
                object_store::Error::NotFound {
                    path: name.to_string(),
                    source: Box::new(source),
                }
            } else {
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(source),
                }
            };
            self.error(name, source)
        });
        crate::metered::record_local_get(local.backend, &result, |(_, size, _)| *size);
        let (file, size, chunk) = result?;
        let read = chunk.len() as u64;
        let first = futures::stream::once(async move { Ok(Bytes::from(chunk)) });
        let (container, name) = (self.container.clone(), name.clone());
        let stream = first
            .chain(local_file_stream(file, read..size))
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

/// `range` of a local file opened by the store, read in [`LOCAL_READ_CHUNK`]s on blocking
/// threads, each chunk's read started as the one before it is handed out (hand-written because
/// object_store reads local files 8 KiB at a time and takes no chunk size).
fn local_file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    use std::io::{Read, Seek, SeekFrom};

    type Pending = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Vec<u8>)>>;

    fn read_next(mut file: std::fs::File, seek: Option<u64>, len: u64) -> Pending {
        tokio::task::spawn_blocking(move || {
            if let Some(offset) = seek {
                file.seek(SeekFrom::Start(offset))?;
            }
            // `len` is at most LOCAL_READ_CHUNK, so it fits a usize.
            let mut chunk = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            (&mut file).take(len).read_to_end(&mut chunk)?;
            if (chunk.len() as u64) < len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than the size it had when opened",
                ));
            }
            Ok((file, chunk))
        })
    }

    let total = range.end.saturating_sub(range.start);
    let first = total.min(LOCAL_READ_CHUNK);
    let seek = (range.start > 0).then_some(range.start);
    let start = (total > 0).then(|| (read_next(file, seek, first), total - first));
    futures::stream::unfold(start, |pending| async move {
        let (read, remaining) = pending?;
        let result = match read.await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        };
        Some(match result {
            Ok((file, chunk)) => {
                let len = remaining.min(LOCAL_READ_CHUNK);
                let next = (remaining > 0).then(|| (read_next(file, None, len), remaining - len));
                (Ok(Bytes::from(chunk)), next)
            }
            Err(source) => (
                Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(source),
                }),
                None,
            ),
        })
    })
    .boxed()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The same folder as a plain object_store container and as the opened local container
    /// (which reads files itself), so both read paths are checked.
    async fn stores(folder: &std::path::Path) -> [BlobStore; 2] {
        let location = crate::BlobStoreLocation::FileSystem {
            root: folder.into(),
        };
        let containers = location
            .open(None, &crate::ContainerNames::default())
            .await
            .unwrap();
        assert!(containers.files.local.is_some());
        let plain = object_store::local::LocalFileSystem::new_with_prefix(
            folder.join(containers.files.container()),
        )
        .unwrap();
        [
            containers.files,
            BlobStore::new(Arc::new(plain), "dicomwebcontainer"),
        ]
    }

    #[tokio::test]
    async fn a_local_file_streams_whole_in_bounded_chunks() {
        let folder = tempfile::tempdir().unwrap();
        for (i, store) in stores(folder.path()).await.into_iter().enumerate() {
            let body: Vec<u8> = (0..(2 * LOCAL_READ_CHUNK + 12_345))
                .map(|i| (i % 251) as u8)
                .collect();
            let name = Path::from(format!("a/{i}.dcm"));
            store
                .put_create(&name, Bytes::from(body.clone()))
                .await
                .unwrap();
            let read = store.get(&name).await.unwrap();
            assert_eq!(read.size, body.len() as u64);
            let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            assert_eq!(chunks.len(), 3);
            assert!(chunks.iter().all(|c| c.len() as u64 <= LOCAL_READ_CHUNK));
            assert_eq!(chunks.concat(), body);

            let empty = Path::from(format!("empty{i}.dcm"));
            store.put_create(&empty, Bytes::new()).await.unwrap();
            let read = store.get(&empty).await.unwrap();
            let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            assert_eq!(chunks.concat(), b"");

            let missing = store.get(&Path::from("a/missing.dcm")).await;
            assert!(matches!(missing, Err(BlobError::NotFound { .. })));
            let folder = store.get(&Path::from("a")).await;
            assert!(matches!(folder, Err(BlobError::NotFound { .. })));
        }
    }

    #[tokio::test]
    async fn a_local_file_cut_short_while_read_fails() {
        let folder = tempfile::tempdir().unwrap();
        for (i, store) in stores(folder.path()).await.into_iter().enumerate() {
            let name = Path::from(format!("cut{i}.dcm"));
            let len = LOCAL_READ_CHUNK as usize + 10;
            store
                .put_create(&name, Bytes::from(vec![7u8; len]))
                .await
                .unwrap();
            let read = store.get(&name).await.unwrap();
            std::fs::File::options()
                .write(true)
                .open(
                    folder
                        .path()
                        .join(store.container())
                        .join(format!("cut{i}.dcm")),
                )
                .unwrap()
                .set_len(100)
                .unwrap();
            let result: Result<Vec<Bytes>, BlobError> = read.stream.try_collect().await;
            assert!(matches!(result, Err(BlobError::Store { .. })), "{result:?}");
        }
    }
}
