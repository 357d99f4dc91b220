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
    /// The same folder without `with_fsync`: a copy (hard link) returns before its directory
    /// entry is on disk, and [`CopyBatch::sync`] makes the entries durable, once per folder.
    unsynced: Arc<dyn ObjectStore>,
    /// The fsyncs of the folder after new small blobs, shared by concurrent writes.
    #[cfg(target_os = "linux")]
    synced: Arc<crate::local_create::FolderSync>,
}

/// Most blobs [`BlobStore::get_local_batch`] opens at once (each may hold a file open).
pub const MAX_BATCH_BLOBS: usize = 64;

/// A stream of blob bytes, as read from a store.
pub type BlobStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// A blob opened for reading: its size is known before the first byte arrives.
pub struct BlobRead {
    /// Total length in bytes.
    pub size: u64,
    /// The bytes, in order, fetched as they are consumed.
    pub stream: BlobStream,
}

/// A whole small body written before its names were known ([`BlobStore::stage`]).
pub struct StagedBody {
    payload: PutPayload,
    len: usize,
    /// On a local folder: the unnamed file that holds the bytes (fsynced once linked).
    #[cfg(target_os = "linux")]
    file: Option<std::fs::File>,
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

    /// Notes that the container is the folder `folder` of a local filesystem, which `files`
    /// (the backend inside `inner`'s metrics) maps names into, and which `unsynced` (a store on
    /// the same folder whose writes skip the per-file fsync) also reaches.
    pub(crate) fn with_local_folder(
        mut self,
        folder: std::path::PathBuf,
        files: Arc<LocalFileSystem>,
        backend: &'static str,
        unsynced: Arc<dyn ObjectStore>,
    ) -> Self {
        self.local = Some(LocalContainer {
            #[cfg(target_os = "linux")]
            synced: Arc::new(crate::local_create::FolderSync::new(folder.clone())),
            folder: folder.into(),
            files,
            backend,
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
        #[cfg(target_os = "linux")]
        if let (Some(local), None) = (&self.local, &self.faults)
            && let Some(written) = self.put_local(local, names, &payload, len).await
        {
            return written;
        }
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

    /// `put_whole` into a local folder without a staging name (see `local_create.rs`);
    /// `None` when the filesystem cannot do that, and nothing was written.
    #[cfg(target_os = "linux")]
    async fn put_local(
        &self,
        local: &LocalContainer,
        names: &[Path],
        payload: &PutPayload,
        len: usize,
    ) -> Option<Result<u64, BlobError>> {
        let body: Vec<Bytes> = payload.iter().cloned().collect();
        self.create_local(local, names, len, move |paths, root| {
            crate::local_create::create(paths, &body, root)
        })
        .await
    }

    /// Gives a staged unnamed file its names (see [`Self::put_staged_body`]); `None` when
    /// the filesystem cannot link it, and nothing was linked.
    #[cfg(target_os = "linux")]
    async fn link_local(
        &self,
        local: &LocalContainer,
        names: &[Path],
        file: std::fs::File,
        len: usize,
    ) -> Option<Result<u64, BlobError>> {
        self.create_local(local, names, len, move |paths, root| {
            crate::local_create::link(&file, paths, root)
        })
        .await
    }

    /// Runs `create` on the local paths of `names` in one blocking task; what it came to, as
    /// [`Self::local_created`] says.
    #[cfg(target_os = "linux")]
    async fn create_local<F>(
        &self,
        local: &LocalContainer,
        names: &[Path],
        len: usize,
        create: F,
    ) -> Option<Result<u64, BlobError>>
    where
        F: FnOnce(
                &[PathBuf],
                &crate::local_create::FolderSync,
            ) -> std::io::Result<crate::local_create::Created>
            + Send
            + 'static,
    {
        let paths = match self.local_paths(local, names) {
            Ok(paths) => paths,
            Err(error) => return Some(Err(error)),
        };
        let root = local.synced.clone();
        let created = tokio::task::spawn_blocking(move || create(&paths, &root))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        self.local_created(local, names, len, created)
    }

    #[cfg(target_os = "linux")]
    fn local_paths(
        &self,
        local: &LocalContainer,
        names: &[Path],
    ) -> Result<Vec<PathBuf>, BlobError> {
        names
            .iter()
            .map(|name| {
                local
                    .files
                    .path_to_filesystem(name)
                    .map_err(|error| self.error(name, error))
            })
            .collect()
    }

    /// What a local create-only write came to, counted as a `put` of each name.
    #[cfg(target_os = "linux")]
    fn local_created(
        &self,
        local: &LocalContainer,
        names: &[Path],
        len: usize,
        created: std::io::Result<crate::local_create::Created>,
    ) -> Option<Result<u64, BlobError>> {
        use crate::local_create::Created;
        let result = match created {
            Ok(Created::Unsupported) => return None,
            Ok(Created::All) => Ok(()),
            Ok(Created::Exists(index)) => Err(BlobError::AlreadyExists {
                container: self.container.to_string(),
                name: names.get(index).map(Path::to_string).unwrap_or_default(),
            }),
            Err(source) => {
                let name = names.first().cloned().unwrap_or_default();
                Err(self.error(&name, local_error(source)))
            }
        };
        crate::metered::record_local_put(local.backend, names.len(), len as u64, &result);
        Some(result.map(|()| len as u64))
    }

    /// The largest body written with one put; a larger one streams through a staged upload.
    pub fn single_put_limit(&self) -> usize {
        self.single_put_limit
    }

    /// Writes a whole body (at most [`Self::single_put_limit`] bytes) before its names are
    /// known, so that the write overlaps whatever decides them (a store's reservation);
    /// [`Self::put_staged_body`] then gives it its names. On a local folder the bytes go
    /// to an unnamed file, which vanishes if it is never named (and is fsynced once it is);
    /// elsewhere they are held and put then.
    pub async fn stage(&self, body: Vec<Bytes>) -> Result<StagedBody, BlobError> {
        #[cfg(target_os = "linux")]
        if let Some(folder) = self.unnamed_folder() {
            let chunks = body.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::local_create::write_unnamed(&folder, &chunks)
            })
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join)));
            return self.staged(body, written);
        }
        Ok(self.held(body))
    }

    /// [`Self::stage`] into two containers at once (an instance's file and its metadata): in
    /// one blocking task when both are local folders, since each hand-off to a blocking
    /// thread and back costs a store more CPU than a small write; elsewhere side by side.
    pub async fn stage_pair(
        first: (&Self, Vec<Bytes>),
        second: (&Self, Vec<Bytes>),
    ) -> (Result<StagedBody, BlobError>, Result<StagedBody, BlobError>) {
        #[cfg(target_os = "linux")]
        if let (Some(a), Some(b)) = (first.0.unnamed_folder(), second.0.unnamed_folder()) {
            let (body_a, body_b) = (first.1.clone(), second.1.clone());
            let written = tokio::task::spawn_blocking(move || {
                (
                    crate::local_create::write_unnamed(&a, &body_a),
                    crate::local_create::write_unnamed(&b, &body_b),
                )
            })
            .await;
            let (written_a, written_b) = written.unwrap_or_else(|join| {
                let failed = || Err(std::io::Error::other(join.to_string()));
                (failed(), failed())
            });
            return (
                first.0.staged(first.1, written_a),
                second.0.staged(second.1, written_b),
            );
        }
        tokio::join!(first.0.stage(first.1), second.0.stage(second.1))
    }

    /// The folder unnamed files are staged in: a local container without fault injection.
    #[cfg(target_os = "linux")]
    fn unnamed_folder(&self) -> Option<Arc<std::path::Path>> {
        match (&self.local, &self.faults) {
            (Some(local), None) => Some(local.folder.clone()),
            _ => None,
        }
    }

    /// A staged body from what writing it to an unnamed file came to.
    #[cfg(target_os = "linux")]
    fn staged(
        &self,
        body: Vec<Bytes>,
        written: std::io::Result<Option<std::fs::File>>,
    ) -> Result<StagedBody, BlobError> {
        let file = written
            .map_err(|source| self.error(&Path::from(STAGING_PREFIX), local_error(source)))?;
        Ok(StagedBody {
            file,
            ..self.held(body)
        })
    }

    /// A staged body held in memory, put when it is named.
    fn held(&self, body: Vec<Bytes>) -> StagedBody {
        let len = body.iter().map(Bytes::len).sum();
        StagedBody {
            payload: PutPayload::from_iter(body),
            len,
            #[cfg(target_os = "linux")]
            file: None,
        }
    }

    /// Creates every name in `names` with a body from [`Self::stage`]: create-only, and on
    /// failure nothing is left behind, as [`Self::put_stream_create`].
    pub async fn put_staged_body(
        &self,
        names: &[Path],
        staged: StagedBody,
    ) -> Result<u64, BlobError> {
        #[cfg(target_os = "linux")]
        if let (Some(local), Some(file)) = (&self.local, staged.file)
            && let Some(written) = self.link_local(local, names, file, staged.len).await
        {
            return written;
        }
        self.put_whole(names, staged.payload, staged.len).await
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

    /// Opens a local file and reads its first chunk: on this thread where the kernel's caches
    /// hold what that needs ([`open_local_cached`]), else in one blocking task (through
    /// object_store, opening and reading are two tasks, each a thread hand-off that cost about
    /// as much CPU as serving a small instance's bytes); the rest streams as
    /// [`local_file_stream`] reads it.
    async fn get_local(&self, local: &LocalContainer, name: &Path) -> Result<BlobRead, BlobError> {
        let path = local
            .files
            .path_to_filesystem(name)
            .map_err(|e| self.error(name, e))?;
        let blocking = match open_local_cached(&path) {
            CachedOpen::Done(opened) => return self.local_read(local, name, opened),
            CachedOpen::Partial { size, read } => tokio::task::spawn_blocking(move || {
                let len = read.len;
                let (file, first) = read.finish()?;
                Ok(OpenedFile {
                    size,
                    rest: (size > len).then_some(file),
                    first,
                })
            }),
            CachedOpen::Blocking => tokio::task::spawn_blocking(move || open_local(&path)),
        };
        let opened = blocking
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        self.local_read(local, name, opened)
    }

    /// Opens, on a local filesystem, the first existing name of each entry of `candidates`
    /// (a blob's names in the order to try them) from the front, in one blocking task, as
    /// long as the first chunks read stay within `budget` bytes (and at most
    /// [`MAX_BATCH_BLOBS`]); at least one entry is opened, and none after the first that
    /// fails. Each result says which candidate was found. `None` when the container is not
    /// local (callers open one blob at a time there): a study of small instances was one
    /// thread hand-off per instance, the largest cost of its retrieval left.
    pub async fn get_local_batch(
        &self,
        candidates: Vec<Vec<Path>>,
        budget: u64,
    ) -> Option<Vec<Result<(usize, BlobRead), BlobError>>> {
        let (Some(local), None) = (&self.local, &self.faults) else {
            return None;
        };
        let mut paths = Vec::with_capacity(candidates.len().min(MAX_BATCH_BLOBS));
        for names in candidates.iter().take(MAX_BATCH_BLOBS) {
            let mut mapped = Vec::with_capacity(names.len());
            for name in names {
                match local.files.path_to_filesystem(name) {
                    Ok(path) => mapped.push(path),
                    Err(error) => {
                        if paths.is_empty() {
                            return Some(vec![Err(self.error(name, error))]);
                        }
                        break;
                    }
                }
            }
            if mapped.len() < names.len() {
                break;
            }
            paths.push(mapped);
        }
        let opened = tokio::task::spawn_blocking(move || {
            let mut opened = Vec::with_capacity(paths.len());
            let mut held = 0u64;
            for names in paths {
                let mut found = Vec::with_capacity(names.len());
                for path in &names {
                    let result = open_local(path);
                    let missing =
                        matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
                    found.push(result);
                    if !missing {
                        break;
                    }
                }
                let failed = found.last().is_none_or(Result::is_err);
                held += found
                    .last()
                    .and_then(|r| r.as_ref().ok())
                    .map_or(0, |o| o.first.len() as u64);
                opened.push(found);
                if failed || held >= budget {
                    break;
                }
            }
            opened
        })
        .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(join) => {
                let name = candidates.first().and_then(|c| c.first()).cloned();
                let source = object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(std::io::Error::other(join)),
                };
                return Some(vec![Err(self.error(&name.unwrap_or_default(), source))]);
            }
        };
        Some(
            opened
                .into_iter()
                .zip(candidates)
                .map(|(attempts, names)| {
                    let tried = attempts.len();
                    let mut last = None;
                    for (attempt, name) in attempts.into_iter().zip(&names) {
                        last = Some(self.local_read(local, name, attempt));
                    }
                    match last {
                        Some(result) => result.map(|read| (tried - 1, read)),
                        None => Err(BlobError::NotFound {
                            container: self.container.to_string(),
                            name: String::new(),
                        }),
                    }
                })
                .collect(),
        )
    }

    /// The [`BlobRead`] of a local file [`open_local`] opened (counted as a `get`).
    fn local_read(
        &self,
        local: &LocalContainer,
        name: &Path,
        opened: std::io::Result<OpenedFile>,
    ) -> Result<BlobRead, BlobError> {
        let result = opened.map_err(|source| self.local_error(name, source));
        crate::metered::record_local_get(local.backend, &result, |opened| opened.size);
        let OpenedFile { size, first, rest } = result?;
        let read = first.len() as u64;
        let first = futures::stream::once(async move { Ok(read_buffers::bytes(first)) });
        let rest = match rest {
            Some(file) => local_file_stream(file, read..size),
            None => futures::stream::empty().boxed(),
        };
        let (container, name) = (self.container.clone(), name.clone());
        let stream = first
            .chain(rest)
            .map_err(move |source| map_error(&container, &name, source))
            .boxed();
        Ok(BlobRead { size, stream })
    }

    /// The error of a local read of `name` that bypassed object_store, as object_store's
    /// would be.
    fn local_error(&self, name: &Path, source: std::io::Error) -> BlobError {
        let source = if source.kind() == std::io::ErrorKind::NotFound {
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
    }

    /// Reads the whole blob; only for blobs known to be small (metadata, frame ranges).
    pub async fn get_bytes(&self, name: &Path) -> Result<Bytes, BlobError> {
        if let (Some(local), None) = (&self.local, &self.faults) {
            let read = self.get_local(local, name).await?;
            let mut chunks: Vec<Bytes> = read.stream.try_collect().await?;
            return Ok(match chunks.len() {
                0 => Bytes::new(),
                1 => chunks.swap_remove(0),
                _ => Bytes::from(chunks.concat()),
            });
        }
        let result = self
            .inner
            .get(name)
            .await
            .map_err(|e| self.error(name, e))?;
        result.bytes().await.map_err(|e| self.error(name, e))
    }

    /// Reads `range` of a blob (frames are served this way).
    pub async fn get_range(&self, name: &Path, range: Range<u64>) -> Result<Bytes, BlobError> {
        if let (Some(local), None) = (&self.local, &self.faults)
            && let Some(read) = self.get_local_range(local, name, &range).await
        {
            return read;
        }
        self.inner
            .get_range(name, range)
            .await
            .map_err(|e| self.error(name, e))
    }

    /// Reads `range` of a local file, on this thread where the kernel's caches hold what that
    /// needs ([`read_range_cached`]; object_store opens and reads in two blocking tasks), else
    /// with one blocking task; `None` leaves it to object_store (a long range, one beyond the
    /// file, or a path not in the lookup cache).
    async fn get_local_range(
        &self,
        local: &LocalContainer,
        name: &Path,
        range: &Range<u64>,
    ) -> Option<Result<Bytes, BlobError>> {
        let path = local.files.path_to_filesystem(name).ok()?;
        let read = match read_range_cached(&path, range) {
            CachedRange::Done(read) => read,
            CachedRange::Partial(read) => tokio::task::spawn_blocking(move || read.finish())
                .await
                .unwrap_or_else(|join| Err(std::io::Error::other(join)))
                .map(|(_, buffer)| buffer),
            CachedRange::Elsewhere => return None,
        };
        let result = read
            .map(read_buffers::bytes)
            .map_err(|source| self.local_error(name, source));
        crate::metered::record_local_get(local.backend, &result, |bytes| bytes.len() as u64);
        Some(result)
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

/// Buffers of local file reads, handed back when the bytes read into them have been sent and
/// reused: a fresh buffer per read made the allocator map and unmap memory (and the kernel
/// fault and clear its pages) for most of a retrieve's bytes. Hand-written: a free list behind
/// `Bytes::from_owner`; no kept crate pools byte buffers.
mod read_buffers {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::LOCAL_READ_CHUNK;

    /// Buffers kept for reuse (so at most this many × [`LOCAL_READ_CHUNK`] bytes sit idle).
    const KEPT: usize = 32;

    static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    /// Kept buffers this much larger than a read are not used for it.
    const SPARE: usize = 256 * 1024;

    /// A buffer of exactly `len` bytes (at most [`LOCAL_READ_CHUNK`]) for a read to overwrite
    /// whole: a kept one of about that size, or a new one. Its bytes are unspecified (those of
    /// an earlier read, or zeros), so it is handed on only once a read has filled all of it;
    /// kept buffers are not cleared, which spares clearing the bytes a read overwrites anyway.
    pub(super) fn take(len: u64) -> Vec<u8> {
        let len = usize::try_from(len.min(LOCAL_READ_CHUNK)).unwrap_or(0);
        let fits = |buffer: &Vec<u8>| {
            let capacity = buffer.capacity();
            capacity >= len && capacity <= len.saturating_mul(4).max(SPARE)
        };
        let kept = FREE.lock().ok().and_then(|mut free| {
            let at = free.iter().rposition(fits)?;
            Some(free.swap_remove(at))
        });
        let mut buffer = kept.unwrap_or_else(|| Vec::with_capacity(len));
        buffer.resize(len, 0);
        buffer
    }

    /// `buffer`'s bytes, which go back to the free list once every clone is dropped.
    pub(super) fn bytes(buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Returned(buffer))
    }

    struct Returned(Vec<u8>);

    impl AsRef<[u8]> for Returned {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Returned {
        fn drop(&mut self) {
            let buffer = std::mem::take(&mut self.0);
            if buffer.capacity() as u64 > LOCAL_READ_CHUNK {
                return;
            }
            if let Ok(mut free) = FREE.lock()
                && free.len() < KEPT
            {
                free.push(buffer);
            }
        }
    }
}

/// A local file opened by [`open_local`].
struct OpenedFile {
    /// Its length.
    size: u64,
    /// Its first [`LOCAL_READ_CHUNK`] bytes (all of them, for a small file).
    first: Vec<u8>,
    /// The file, when there is more to read after `first`.
    rest: Option<std::fs::File>,
}

/// Opens a local file and reads its first chunk (blocking).
fn open_local(path: &std::path::Path) -> std::io::Result<OpenedFile> {
    let mut file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a file",
        ));
    }
    let size = metadata.len();
    let len = size.min(LOCAL_READ_CHUNK);
    let first = read_chunk(&mut file, len)?;
    Ok(OpenedFile {
        size,
        first,
        rest: (size > len).then_some(file),
    })
}

/// Reads of local files at most this long may be done on the calling (async) thread; a
/// longer one would hold that thread, and the other tasks it runs, too long.
const INLINE_READ_LIMIT: u64 = 256 * 1024;

/// What [`open_local_cached`] got done without blocking.
enum CachedOpen {
    /// Opened and its first chunk read (or the open failed for good).
    Done(std::io::Result<OpenedFile>),
    /// Opened, but part of its first chunk is not in the page cache (or is too long to read
    /// here): the read is finished on a blocking thread.
    Partial {
        /// The file's length.
        size: u64,
        /// The first chunk's read.
        read: PendingRead,
    },
    /// Not attempted, or a path component is not in the kernel's lookup cache: the whole open
    /// is done by [`open_local`] on a blocking thread.
    Blocking,
}

/// A read of `len` bytes at `offset` of an open file, done up to `filled`.
struct PendingRead {
    file: std::fs::File,
    offset: u64,
    len: u64,
    /// The buffer, if taken yet.
    buffer: Option<Vec<u8>>,
    filled: usize,
}

impl PendingRead {
    /// Reads the rest (blocking).
    fn finish(self) -> std::io::Result<(std::fs::File, Vec<u8>)> {
        use std::os::unix::fs::FileExt;

        let Self {
            file,
            offset,
            len,
            buffer,
            filled,
        } = self;
        let mut buffer = buffer.unwrap_or_else(|| read_buffers::take(len));
        if let Some(rest) = buffer.get_mut(filled..) {
            file.read_exact_at(rest, offset + filled as u64)
                .map_err(shrunk)?;
        }
        Ok((file, buffer))
    }
}

/// Opens a local file on the calling thread if that cannot block it on the disk: only if
/// every component of the path is in the kernel's lookup cache (`openat2` with
/// `RESOLVE_CACHED`, Linux 5.12). `Ok(None)` when it is not (or the call is not available
/// here); else the file and its length.
#[cfg(target_os = "linux")]
fn open_cached(path: &std::path::Path) -> std::io::Result<Option<(std::fs::File, u64)>> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;

    let fd = match rustix::fs::openat2(
        CWD,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::CACHED,
    ) {
        Ok(fd) => fd,
        // A cached lookup that ends at a missing name is as sure as an uncached one.
        Err(Errno::NOENT) => return Err(Errno::NOENT.into()),
        // Not cached, or not supported here (an older kernel, a sandbox).
        Err(_) => return Ok(None),
    };
    let file = std::fs::File::from(fd);
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a file",
        ));
    }
    Ok(Some((file, metadata.len())))
}

#[cfg(not(target_os = "linux"))]
fn open_cached(_path: &std::path::Path) -> std::io::Result<Option<(std::fs::File, u64)>> {
    Ok(None)
}

/// Reads `file` from `offset` into `buffer` as far as the page cache holds it (`preadv2` with
/// `RWF_NOWAIT`), without blocking on the disk: how many bytes were read. A file that ends
/// before the buffer is full has shrunk, which is an error.
#[cfg(target_os = "linux")]
fn read_cached_at(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> std::io::Result<usize> {
    use rustix::io::Errno;

    let mut filled = 0;
    while let Some(rest) = buffer.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match rustix::io::preadv2(
            file,
            &mut [std::io::IoSliceMut::new(rest)],
            offset + filled as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) => return Err(shrunk(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(read) => filled += read,
            Err(Errno::INTR) => {}
            // Not in the page cache, or no RWF_NOWAIT on this kernel or filesystem.
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(filled)
}

#[cfg(not(target_os = "linux"))]
fn read_cached_at(
    _file: &std::fs::File,
    _buffer: &mut [u8],
    _offset: u64,
) -> std::io::Result<usize> {
    Ok(0)
}

/// Starts a read of `len` bytes at `offset` of `file` on the calling thread, as far as the
/// page cache holds them when `len` is at most [`INLINE_READ_LIMIT`].
fn read_inline(file: std::fs::File, offset: u64, len: u64) -> std::io::Result<PendingRead> {
    if len > INLINE_READ_LIMIT {
        return Ok(PendingRead {
            file,
            offset,
            len,
            buffer: None,
            filled: 0,
        });
    }
    let mut buffer = read_buffers::take(len);
    let filled = read_cached_at(&file, &mut buffer, offset)?;
    Ok(PendingRead {
        file,
        offset,
        len,
        buffer: Some(buffer),
        filled,
    })
}

/// Opens a local file and reads its first chunk on the calling thread as far as that cannot
/// block it on the disk ([`open_cached`], [`read_cached_at`]). A small instance read this way
/// costs no thread hand-off, which was the largest cost of serving it; what the caches miss is
/// read on a blocking thread as before. Hand-written over rustix's system calls: neither tokio
/// nor object_store reads without a blocking task.
fn open_local_cached(path: &std::path::Path) -> CachedOpen {
    let (file, size) = match open_cached(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return CachedOpen::Blocking,
        Err(error) => return CachedOpen::Done(Err(error)),
    };
    let read = match read_inline(file, 0, size.min(LOCAL_READ_CHUNK)) {
        Ok(read) => read,
        Err(error) => return CachedOpen::Done(Err(error)),
    };
    match read.buffer {
        Some(first) if read.filled == first.len() => CachedOpen::Done(Ok(OpenedFile {
            size,
            rest: (size > read.len).then_some(read.file),
            first,
        })),
        _ => CachedOpen::Partial { size, read },
    }
}

/// What [`read_range_cached`] got done without blocking.
enum CachedRange {
    /// Read (or failed for good).
    Done(std::io::Result<Vec<u8>>),
    /// Opened, but part of the range is not in the page cache.
    Partial(PendingRead),
    /// Left to object_store: not in the lookup cache, too long, or not within the file.
    Elsewhere,
}

/// Reads `range` of a local file on the calling thread as far as that cannot block it (see
/// [`open_local_cached`]); frames are served this way.
fn read_range_cached(path: &std::path::Path, range: &Range<u64>) -> CachedRange {
    let len = range.end.saturating_sub(range.start);
    if len == 0 || len > INLINE_READ_LIMIT {
        return CachedRange::Elsewhere;
    }
    let file = match open_cached(path) {
        Ok(Some((file, size))) if range.end <= size => file,
        Ok(_) => return CachedRange::Elsewhere,
        Err(error) => return CachedRange::Done(Err(error)),
    };
    match read_inline(file, range.start, len) {
        Ok(PendingRead {
            buffer: Some(buffer),
            filled,
            ..
        }) if filled == buffer.len() => CachedRange::Done(Ok(buffer)),
        Ok(read) => CachedRange::Partial(read),
        Err(error) => CachedRange::Done(Err(error)),
    }
}

/// The next `len` bytes of `file`, into a reused buffer, in one `read` where the file allows
/// (`read_to_end` probed with reads of 8 KiB, then twice that, and so on: five reads for a
/// 132 KB instance); a file that ends sooner has shrunk since its size was taken, which is an
/// error.
fn read_chunk(file: &mut std::fs::File, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;

    let mut chunk = read_buffers::take(len);
    file.read_exact(&mut chunk).map_err(shrunk)?;
    Ok(chunk)
}

/// The error of a read that found the end of a file before the length it had when opened.
fn shrunk(error: std::io::Error) -> std::io::Error {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is shorter than the size it had when opened",
        )
    } else {
        error
    }
}

/// `range` of a local file opened by the store, read in [`LOCAL_READ_CHUNK`]s on blocking
/// threads, each chunk's read started as the one before it is handed out (hand-written because
/// object_store reads local files 8 KiB at a time and takes no chunk size).
fn local_file_stream(
    file: std::fs::File,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, object_store::Error>> {
    use std::io::{Seek, SeekFrom};

    type Pending = tokio::task::JoinHandle<std::io::Result<(std::fs::File, Vec<u8>)>>;

    fn read_next(mut file: std::fs::File, seek: Option<u64>, len: u64) -> Pending {
        tokio::task::spawn_blocking(move || {
            if let Some(offset) = seek {
                file.seek(SeekFrom::Start(offset))?;
            }
            let chunk = read_chunk(&mut file, len)?;
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
                (Ok(read_buffers::bytes(chunk)), next)
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
            .files
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
/// An IO error of a local write, as `object_store`'s filesystem reports one.
#[cfg(target_os = "linux")]
fn local_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    }
}

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
            let name = Path::from(format!("a/{i}.bin"));
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

            let empty = Path::from(format!("empty{i}.bin"));
            store.put_create(&empty, Bytes::new()).await.unwrap();
            let read = store.get(&empty).await.unwrap();
            let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            assert_eq!(chunks.concat(), b"");

            let missing = store.get(&Path::from("a/missing.bin")).await;
            assert!(matches!(missing, Err(BlobError::NotFound { .. })));
            let folder = store.get(&Path::from("a")).await;
            assert!(matches!(folder, Err(BlobError::NotFound { .. })));
        }
    }

    /// A file whose bytes are partly out of the page cache is read on this thread as far as
    /// the cache holds it and the rest on a blocking thread; either way, whole.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_local_file_partly_out_of_the_page_cache_reads_whole() {
        let folder = tempfile::tempdir().unwrap();
        let [store, _] = stores(folder.path()).await;
        // A large read first, so the smaller ones below reuse a buffer that held other bytes.
        let large = Path::from("large.bin");
        store
            .put_create(&large, Bytes::from(vec![9u8; 200_000]))
            .await
            .unwrap();
        let chunks: Vec<Bytes> = store
            .get(&large)
            .await
            .unwrap()
            .stream
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.concat(), vec![9u8; 200_000]);
        for (i, len) in [150_000usize, 4096, 1].into_iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            let name = Path::from(format!("cold{i}.bin"));
            store
                .put_create(&name, Bytes::from(body.clone()))
                .await
                .unwrap();
            let path = folder
                .path()
                .join(store.container())
                .join(format!("cold{i}.bin"));
            let file = std::fs::File::open(&path).unwrap();
            // The second half leaves the page cache (its pages are clean: writes are synced).
            let half = (len / 2) as u64;
            rustix::fs::fadvise(&file, half, None, rustix::fs::Advice::DontNeed).unwrap();
            let read = store.get(&name).await.unwrap();
            assert_eq!(read.size, len as u64);
            let chunks: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            assert_eq!(chunks.concat(), body, "{len} bytes");
            rustix::fs::fadvise(&file, half, None, rustix::fs::Advice::DontNeed).unwrap();
            let start = len as u64 / 3;
            let range = store.get_range(&name, start..len as u64).await.unwrap();
            assert_eq!(range, body[start as usize..], "{len} bytes from {start}");
        }
    }

    /// Ranges of a local file read by the store itself answer as object_store's do.
    #[tokio::test]
    async fn local_ranges_read_as_object_store_reads_them() {
        let folder = tempfile::tempdir().unwrap();
        let [local, plain] = stores(folder.path()).await;
        let len = INLINE_READ_LIMIT + 1000;
        let body: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
        let name = Path::from("ranges.bin");
        local
            .put_create(&name, Bytes::from(body.clone()))
            .await
            .unwrap();
        for range in [
            0..1,
            10..2000,
            0..len,
            len - 1..len,
            5..INLINE_READ_LIMIT + 5,
            len - 10..len + 10,
            len..len + 1,
            len + 5..len + 10,
        ] {
            let ours = local.get_range(&name, range.clone()).await;
            let theirs = plain.get_range(&name, range.clone()).await;
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{range:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{range:?}: {ours:?} and {theirs:?}"),
            }
        }
        let missing = local.get_range(&Path::from("gone.bin"), 0..1).await;
        assert!(matches!(missing, Err(BlobError::NotFound { .. })));
    }

    #[tokio::test]
    async fn a_local_file_cut_short_while_read_fails() {
        let folder = tempfile::tempdir().unwrap();
        for (i, store) in stores(folder.path()).await.into_iter().enumerate() {
            let name = Path::from(format!("cut{i}.bin"));
            // Three chunks: the first is read by `get`, the second may be read ahead before the
            // file is cut, the third is read only once the stream is polled, after the cut.
            let len = 2 * LOCAL_READ_CHUNK as usize + 10;
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
                        .join(format!("cut{i}.bin")),
                )
                .unwrap()
                .set_len(100)
                .unwrap();
            let result: Result<Vec<Bytes>, BlobError> = read.stream.try_collect().await;
            assert!(matches!(result, Err(BlobError::Store { .. })), "{result:?}");
        }
    }

    #[tokio::test]
    async fn a_local_batch_opens_within_its_budget_and_falls_back() {
        let folder = tempfile::tempdir().unwrap();
        let [local, plain] = stores(folder.path()).await;
        assert!(plain.get_local_batch(vec![], 1).await.is_none());
        for i in 0..4u8 {
            let body = Bytes::from(vec![i; 1000]);
            local
                .put_create(&Path::from(format!("b/{i}.bin")), body)
                .await
                .unwrap();
        }
        let name = |n: &str| Path::from(format!("b/{n}.bin"));
        // The second instance exists only under its fallback name.
        let candidates = vec![
            vec![name("0")],
            vec![name("missing"), name("1")],
            vec![name("2")],
            vec![name("3")],
        ];
        let opened = local
            .get_local_batch(candidates.clone(), 2500)
            .await
            .unwrap();
        assert_eq!(opened.len(), 3, "stops once the budget is reached");
        let mut bodies = Vec::new();
        for (i, result) in opened.into_iter().enumerate() {
            let (used, read) = result.unwrap();
            assert_eq!(used, usize::from(i == 1));
            assert_eq!(read.size, 1000);
            let bytes: Vec<Bytes> = read.stream.try_collect().await.unwrap();
            bodies.push(bytes.concat());
        }
        assert_eq!(bodies, [vec![0u8; 1000], vec![1; 1000], vec![2; 1000]]);

        let all = local.get_local_batch(candidates, u64::MAX).await.unwrap();
        assert_eq!(all.len(), 4);
        let first_only = local
            .get_local_batch(vec![vec![name("3")], vec![name("0")]], 0)
            .await
            .unwrap();
        assert_eq!(first_only.len(), 1, "always opens one");

        let missing = vec![vec![name("0")], vec![name("gone")], vec![name("2")]];
        let opened = local.get_local_batch(missing, u64::MAX).await.unwrap();
        assert_eq!(opened.len(), 2, "nothing after a failure");
        assert!(matches!(opened[1], Err(BlobError::NotFound { .. })));
    }
}
