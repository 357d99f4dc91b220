//! Blob-store calls, failures and bytes as Prometheus metrics: an `object_store` wrapper (like
//! [`crate::FaultInjectingStore`] and object_store's `ThrottledStore`) around every backend a
//! [`crate::BlobStoreLocation`] opens, recording through the `metrics` facade (a no-op until
//! the server installs a recorder).
//!
//! - `tessera_blob_calls_total{backend, operation}`: calls made to the store.
//! - `tessera_blob_errors_total{backend, operation}`: calls that failed. "Not found" and "already
//!   exists" are answers, not failures, and are not counted.
//! - `tessera_blob_bytes_written_total{backend}` and `tessera_blob_bytes_read_total{backend}`:
//!   bytes sent to and received from the store (reads as they stream).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};

/// Calls made to the blob store.
pub const CALLS: &str = "tessera_blob_calls_total";
/// Calls to the blob store that failed (not counting "not found" and "already exists").
pub const ERRORS: &str = "tessera_blob_errors_total";
/// Bytes written to the blob store.
pub const BYTES_WRITTEN: &str = "tessera_blob_bytes_written_total";
/// Bytes read from the blob store.
pub const BYTES_READ: &str = "tessera_blob_bytes_read_total";

/// An `ObjectStore` that counts the calls, failures and bytes of the store it wraps.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    backend: &'static str,
}

impl MeteredStore {
    /// Wraps `inner`, labelling its metrics `backend` (`filesystem`, `memory`, `azure`, `s3`).
    pub fn new(inner: Arc<dyn ObjectStore>, backend: &'static str) -> Self {
        Self { inner, backend }
    }

    fn record<T>(&self, operation: &'static str, result: &Result<T>) {
        record(self.backend, operation, result);
    }
}

fn record<T>(backend: &'static str, operation: &'static str, result: &Result<T>) {
    metrics::counter!(CALLS, "backend" => backend, "operation" => operation).increment(1);
    if let Err(error) = result
        && !matches!(
            error,
            object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
        )
    {
        metrics::counter!(ERRORS, "backend" => backend, "operation" => operation).increment(1);
    }
}

/// Counts a read of a local file that bypassed the store (as [`MeteredStore`] counts a `get`):
/// the call, a failure, and `size` bytes of what it opened.
pub(crate) fn record_local_get<T>(
    backend: &'static str,
    result: &std::result::Result<T, crate::BlobError>,
    size: impl FnOnce(&T) -> u64,
) {
    metrics::counter!(CALLS, "backend" => backend, "operation" => "get").increment(1);
    match result {
        Ok(opened) => {
            metrics::counter!(BYTES_READ, "backend" => backend).increment(size(opened));
        }
        Err(crate::BlobError::NotFound { .. }) => {}
        Err(_) => {
            metrics::counter!(ERRORS, "backend" => backend, "operation" => "get").increment(1);
        }
    }
}

/// Counts a create-only write of a local file that bypassed the store (as [`MeteredStore`]
/// counts a `put`): one call per name, and `len` bytes per name created.
pub(crate) fn record_local_put(
    backend: &'static str,
    names: usize,
    len: u64,
    result: &std::result::Result<(), crate::BlobError>,
) {
    metrics::counter!(CALLS, "backend" => backend, "operation" => "put").increment(names as u64);
    match result {
        Ok(()) => {
            metrics::counter!(BYTES_WRITTEN, "backend" => backend).increment(len * names as u64);
        }
        Err(crate::BlobError::AlreadyExists { .. }) => {}
        Err(_) => {
            metrics::counter!(ERRORS, "backend" => backend, "operation" => "put").increment(1);
        }
    }
}

fn count_read(backend: &'static str, result: &Result<Bytes>) {
    if let Ok(chunk) = result {
        metrics::counter!(BYTES_READ, "backend" => backend).increment(chunk.len() as u64);
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeteredStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let len = payload.content_length() as u64;
        let result = self.inner.put_opts(location, payload, opts).await;
        self.record("put", &result);
        if result.is_ok() {
            metrics::counter!(BYTES_WRITTEN, "backend" => self.backend).increment(len);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let result = self.inner.put_multipart_opts(location, opts).await;
        self.record("start_upload", &result);
        Ok(Box::new(MeteredUpload {
            upload: result?,
            backend: self.backend,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let operation = if options.head { "head" } else { "get" };
        let result = self.inner.get_opts(location, options).await;
        self.record(operation, &result);
        let mut result = result?;
        let GetResultPayload::Stream(stream) = result.payload else {
            // A local file is read by the caller straight from disk; its size is what it reads.
            metrics::counter!(BYTES_READ, "backend" => self.backend)
                .increment(result.range.end.saturating_sub(result.range.start));
            return Ok(result);
        };
        let backend = self.backend;
        result.payload = GetResultPayload::Stream(
            stream
                .inspect(move |chunk| count_read(backend, chunk))
                .boxed(),
        );
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let backend = self.backend;
        self.inner
            .delete_stream(locations)
            .inspect(move |result| record(backend, "delete", result))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        metrics::counter!(CALLS, "backend" => self.backend, "operation" => "list").increment(1);
        let backend = self.backend;
        self.inner
            .list(prefix)
            .inspect(move |item| {
                if item.is_err() {
                    metrics::counter!(ERRORS, "backend" => backend, "operation" => "list")
                        .increment(1);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let result = self.inner.list_with_delimiter(prefix).await;
        self.record("list", &result);
        result
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let result = self.inner.copy_opts(from, to, options).await;
        self.record("copy", &result);
        result
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let result = self.inner.rename_opts(from, to, options).await;
        self.record("rename", &result);
        result
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let result = self.inner.get_ranges(location, ranges).await;
        self.record("get_range", &result);
        if let Ok(parts) = &result {
            let len: usize = parts.iter().map(Bytes::len).sum();
            metrics::counter!(BYTES_READ, "backend" => self.backend).increment(len as u64);
        }
        result
    }
}

/// A multipart upload whose parts are counted.
#[derive(Debug)]
struct MeteredUpload {
    upload: Box<dyn MultipartUpload>,
    backend: &'static str,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        let put = self.upload.put_part(data);
        let backend = self.backend;
        Box::pin(async move {
            let result = put.await;
            record(backend, "upload_part", &result);
            if result.is_ok() {
                metrics::counter!(BYTES_WRITTEN, "backend" => backend).increment(len);
            }
            result
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let result = self.upload.complete().await;
        record(self.backend, "complete_upload", &result);
        result
    }

    async fn abort(&mut self) -> Result<()> {
        let result = self.upload.abort().await;
        record(self.backend, "abort_upload", &result);
        result
    }
}
