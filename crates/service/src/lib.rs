//! Tessera's use cases, between the HTTP surface and the stores: storing an instance (index
//! reservation, streaming to blobs, completion), retrieving files, metadata and frames,
//! deleting, reading the change feed, and the background workers that remove deleted blobs and
//! sweep what crashed stores left behind.
//!
//! Nothing here knows HTTP: results are domain values and [`ServiceError`]s.

pub mod metrics;
mod process;
mod retrieve;
mod store;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use tessera_blob::{BlobError, InstanceBlobStore};
use tessera_core::QidoQuery;
use tessera_index::InstanceIndex;

pub use process::{Liveness, ProcessHeartbeat, current_process, liveness};
pub use retrieve::{FrameData, InstanceFile};
pub use store::{ApiVersion, FailureReason, StoreOutcome, WarningReason};
pub use tessera_index::{
    ChangeAction, ChangeFeedEntry, ChangeState, IndexError, OperationRecord, OperationResults,
    OperationStatus, PoolUsage, QidoRow, RetrieveScope, StoredInstance,
};
pub use tessera_index::{ProcessId, ProcessInfo};
pub use workers::{DeletedInstanceCleanup, StaleStoreSweeper};

/// What can go wrong in a use case (per-instance STOW failures are [`StoreOutcome`]s instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Nothing matched the request.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A requested frame does not exist.
    #[error("frame {0} does not exist")]
    FrameNotFound(u32),
    /// Frames cannot be served without transcoding or parsing the whole file.
    #[error("frames of this instance cannot be served without transcoding")]
    FramesUnavailable,
    /// What is stored contradicts itself (a frame table beyond its file); logged with the
    /// watermark.
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// How long deleted blobs wait, and how stores are swept.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    /// `DeleteDelay`: time between a delete and the removal of its blobs.
    pub delete_delay: Duration,
    /// What one stored instance may make the store hold or walk.
    pub limits: tessera_core::Limits,
}

/// The DICOMweb use cases over one index and one blob store.
#[derive(Clone)]
pub struct DicomService {
    index: InstanceIndex,
    blobs: Arc<InstanceBlobStore>,
    settings: ServiceSettings,
}

impl DicomService {
    /// Use cases over `index` and `blobs`.
    pub fn new(
        index: InstanceIndex,
        blobs: Arc<InstanceBlobStore>,
        settings: ServiceSettings,
    ) -> Self {
        Self {
            index,
            blobs,
            settings,
        }
    }

    /// The index.
    pub fn index(&self) -> &InstanceIndex {
        &self.index
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<InstanceBlobStore> {
        &self.blobs
    }

    /// Runs a QIDO search.
    pub async fn search(&self, query: &QidoQuery) -> Result<Vec<QidoRow>, ServiceError> {
        Ok(self.index.search(query).await?)
    }

    /// The metadata of the instance with this watermark (for search attributes only the
    /// metadata has), if it still exists.
    pub async fn metadata_by_watermark(
        &self,
        watermark: u64,
    ) -> Result<Option<bytes::Bytes>, ServiceError> {
        match self.index.instance_by_watermark(watermark).await? {
            Some(instance) => Ok(Some(self.metadata(&instance).await?)),
            None => Ok(None),
        }
    }

    /// A background operation's stored state, by id (32 hex digits).
    pub async fn operation(&self, id: &str) -> Result<Option<OperationRecord>, ServiceError> {
        Ok(self.index.operation(id).await?)
    }

    /// Deletes the instances in `scope` (blobs go after `DeleteDelay`).
    pub async fn delete(&self, scope: &RetrieveScope) -> Result<usize, ServiceError> {
        match self.index.delete(scope, self.settings.delete_delay).await {
            Err(IndexError::NotFound) => Err(ServiceError::NotFound(scope_name(scope))),
            other => Ok(other?),
        }
    }
}

fn scope_name(scope: &RetrieveScope) -> &'static str {
    match scope {
        RetrieveScope::Study(_) => "study",
        RetrieveScope::Series(..) => "series",
        RetrieveScope::Instance(_) => "instance",
    }
}
