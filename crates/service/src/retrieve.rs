//! WADO: files, metadata and frames of stored instances.

use bytes::Bytes;
use tessera_blob::{BlobError, BlobRead};
use tessera_dicom::FrameRanges;
use tessera_index::{RetrieveScope, StoredInstance};

use crate::{DicomService, ServiceError, scope_name};

/// An instance's file, opened for streaming.
pub struct InstanceFile {
    /// What the index knows of it.
    pub instance: StoredInstance,
    /// Its bytes.
    pub read: BlobRead,
}

/// The bytes of one frame.
pub type FrameData = Bytes;

impl DicomService {
    /// The `Created` instances in `scope`, oldest first; [`ServiceError::NotFound`] when none.
    pub async fn instances(
        &self,
        scope: &RetrieveScope,
    ) -> Result<Vec<StoredInstance>, ServiceError> {
        let found = self.index.instances(scope).await?;
        if found.is_empty() {
            return Err(ServiceError::NotFound(scope_name(scope)));
        }
        Ok(found)
    }

    /// Opens an instance's file. A blob missing behind a `Created` row is reported as not found
    /// (it can only be a delete racing the request).
    pub async fn open_file(&self, instance: StoredInstance) -> Result<InstanceFile, ServiceError> {
        let read = self
            .blobs
            .get_file(&instance.instance)
            .await
            .map_err(not_found("instance"))?;
        Ok(InstanceFile { instance, read })
    }

    /// An instance's metadata JSON (one DICOM JSON object).
    pub async fn metadata(&self, instance: &StoredInstance) -> Result<Bytes, ServiceError> {
        self.blobs
            .get_metadata(&instance.instance)
            .await
            .map_err(not_found("instance"))
    }

    /// Frames (1-based numbers) of one instance, read by range from its file.
    pub async fn frames(
        &self,
        scope: &RetrieveScope,
        numbers: &[u32],
    ) -> Result<Vec<FrameData>, ServiceError> {
        let instance = self.instances(scope).await?.remove(0);
        if !instance.has_frame_ranges {
            return Err(ServiceError::FramesUnavailable);
        }
        let json = self
            .blobs
            .get_frame_ranges(instance.instance.watermark())
            .await?
            .ok_or(ServiceError::FramesUnavailable)?;
        let ranges = FrameRanges::from_json(&json).ok_or(ServiceError::FramesUnavailable)?;
        let mut frames = Vec::with_capacity(numbers.len());
        for &number in numbers {
            let range = number
                .checked_sub(1)
                .and_then(|i| ranges.0.get(i as usize))
                .ok_or(ServiceError::FrameNotFound(number))?;
            let bytes = self
                .blobs
                .get_file_range(
                    &instance.instance,
                    range.offset..range.offset + range.length,
                )
                .await
                .map_err(not_found("instance"))?;
            frames.push(bytes);
        }
        Ok(frames)
    }
}

fn not_found(what: &'static str) -> impl Fn(BlobError) -> ServiceError {
    move |error| match error {
        BlobError::NotFound { .. } => ServiceError::NotFound(what),
        other => ServiceError::Blob(other),
    }
}
