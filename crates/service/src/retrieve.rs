//! WADO: files, metadata and frames of stored instances.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tessera_blob::{BlobError, BlobRead};
use tessera_dicom::{FrameRange, FrameRanges};
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
        let stream = read
            .stream
            .inspect_ok(|chunk| served("file", chunk.len()))
            .boxed();
        let read = BlobRead {
            size: read.size,
            stream,
        };
        Ok(InstanceFile { instance, read })
    }

    /// Opens the files of instances from the front of `instances` (several at once where the
    /// blob store allows, their first chunks within `budget` bytes): at least one result when
    /// `instances` is not empty, and none after the first error.
    pub async fn open_files(
        &self,
        instances: &[StoredInstance],
        budget: u64,
    ) -> Vec<Result<InstanceFile, ServiceError>> {
        let versioned: Vec<_> = instances
            .iter()
            .take(tessera_blob::MAX_BATCH_BLOBS)
            .map(|i| i.instance.clone())
            .collect();
        let opened = self.blobs.get_files(&versioned, budget).await;
        let mut files = Vec::with_capacity(opened.len());
        for (read, instance) in opened.into_iter().zip(instances) {
            match read {
                Ok(read) => files.push(Ok(InstanceFile {
                    instance: instance.clone(),
                    read: BlobRead {
                        size: read.size,
                        stream: read
                            .stream
                            .inspect_ok(|chunk| served("file", chunk.len()))
                            .boxed(),
                    },
                })),
                Err(error) => {
                    files.push(Err(not_found("instance")(error)));
                    break;
                }
            }
        }
        files
    }

    /// An instance's metadata JSON (one DICOM JSON object).
    pub async fn metadata(&self, instance: &StoredInstance) -> Result<Bytes, ServiceError> {
        let metadata = self
            .blobs
            .get_metadata(&instance.instance)
            .await
            .map_err(not_found("instance"))?;
        served("metadata", metadata.len());
        Ok(metadata)
    }

    /// The ranges of frames (1-based numbers) of one instance, each checked against the
    /// stored file's length: [`ServiceError::FrameNotFound`] for a frame it does not have, and
    /// [`ServiceError::Corrupt`] for a table that points beyond the file.
    pub async fn frame_ranges(
        &self,
        instance: &StoredInstance,
        numbers: &[u32],
    ) -> Result<Vec<FrameRange>, ServiceError> {
        // Native frames are located by the index; others by the frame-range blob.
        let ranges = match instance.native_frames {
            Some(_) => None,
            None if instance.has_frame_ranges => {
                let json = self
                    .blobs
                    .get_frame_ranges(instance.instance.watermark())
                    .await?
                    .ok_or(ServiceError::FramesUnavailable)?;
                Some(FrameRanges::from_json(&json).ok_or(ServiceError::FramesUnavailable)?)
            }
            None => return Err(ServiceError::FramesUnavailable),
        };
        let mut selected = Vec::with_capacity(numbers.len());
        for &number in numbers {
            let index = number
                .checked_sub(1)
                .ok_or(ServiceError::FrameNotFound(number))?;
            let range = match (&ranges, instance.native_frames) {
                (Some(ranges), _) => ranges.0.get(index as usize).copied(),
                (None, Some(native)) => native
                    .frame(u64::from(index))
                    .map(|(offset, length)| FrameRange { offset, length }),
                (None, None) => None,
            }
            .ok_or(ServiceError::FrameNotFound(number))?;
            let end = range.offset.checked_add(range.length);
            let inside = match (end, instance.content_length) {
                (Some(end), Some(length)) => end <= length,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !inside {
                let watermark = instance.instance.watermark();
                tracing::error!(%watermark, frame = number, "a frame range lies beyond the stored file");
                return Err(ServiceError::Corrupt(format!(
                    "frame {number} of watermark {watermark} lies beyond its file"
                )));
            }
            selected.push(range);
        }
        Ok(selected)
    }

    /// The bytes of one frame, by a range read of its instance's file.
    pub async fn read_frame(
        &self,
        instance: &StoredInstance,
        range: FrameRange,
    ) -> Result<FrameData, ServiceError> {
        let end = range
            .offset
            .checked_add(range.length)
            .ok_or_else(|| ServiceError::Corrupt("a frame range overflows".into()))?;
        let frame = self
            .blobs
            .get_file_range(&instance.instance, range.offset..end)
            .await
            .map_err(not_found("instance"))?;
        served("frame", frame.len());
        Ok(frame)
    }
}

/// Counts bytes handed to a WADO response.
fn served(kind: &'static str, len: usize) {
    metrics::counter!(crate::metrics::BYTES_SERVED, "kind" => kind).increment(len as u64);
}

fn not_found(what: &'static str) -> impl Fn(BlobError) -> ServiceError {
    move |error| match error {
        BlobError::NotFound { .. } => ServiceError::NotFound(what),
        other => ServiceError::Blob(other),
    }
}
