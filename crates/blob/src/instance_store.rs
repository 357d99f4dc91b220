//! The FormatType-aware store of an instance's blobs (contract §4, orig B.2).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::Stream;
use object_store::path::Path;
use tessera_core::{FormatType, VersionedInstance, Watermark};

use crate::layout::{self, BlobLayout};
use crate::{BlobError, BlobMeta, BlobRead, BlobStore, BodyError, Containers, StagedBody};

/// How an [`InstanceBlobStore`] chooses names: the original's `BlobMigration` settings plus
/// Tessera's read fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatPolicy {
    /// Which layouts are written and read first.
    pub format: FormatType,
    /// In `New`, read the Old name when the New blob is missing (`Tessera:ReadFallback`), so a
    /// switch to New before the copy finished never makes data unreadable. `Dual` always falls
    /// back: New blobs of instances stored before Dual do not exist until the copy makes them.
    pub read_fallback: bool,
    /// Log each use of an Old name with the instance's watermark (`LogOldFormatUsage`).
    pub log_old_format_usage: bool,
}

impl FormatPolicy {
    /// `format` with the defaults: fallback on, no Old-name logging.
    pub fn new(format: FormatType) -> Self {
        Self {
            format,
            read_fallback: true,
            log_old_format_usage: false,
        }
    }

    /// The layouts a store writes, in the order it writes them.
    pub fn write_layouts(&self) -> &'static [BlobLayout] {
        match self.format {
            FormatType::Old => &[BlobLayout::Old],
            FormatType::Dual => &[BlobLayout::Old, BlobLayout::New],
            FormatType::New => &[BlobLayout::New],
        }
    }

    /// The layout read first, and the one read when that blob is missing.
    fn read_layouts(&self) -> (BlobLayout, Option<BlobLayout>) {
        match self.format {
            FormatType::Old => (BlobLayout::Old, None),
            FormatType::Dual => (BlobLayout::New, Some(BlobLayout::Old)),
            FormatType::New => (
                BlobLayout::New,
                self.read_fallback.then_some(BlobLayout::Old),
            ),
        }
    }
}

/// Writes, reads and deletes the file, metadata and frame ranges of instances under the names
/// the [`FormatPolicy`] prescribes. The only component that decides which names an instance
/// has; everything above it speaks of instances, not blobs.
pub struct InstanceBlobStore {
    containers: Containers,
    policy: FormatPolicy,
    fallback_reads: AtomicU64,
    fallback_logged: Mutex<HashSet<Watermark>>,
}

/// How many instances the once-per-instance fallback log remembers before it starts over.
const FALLBACK_LOG_MEMORY: usize = 10_000;

/// Which blob of an instance an operation touches.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Metadata,
}

impl InstanceBlobStore {
    /// A store over `containers` that follows `policy`.
    pub fn new(containers: Containers, policy: FormatPolicy) -> Self {
        Self {
            containers,
            policy,
            fallback_reads: AtomicU64::new(0),
            fallback_logged: Mutex::new(HashSet::new()),
        }
    }

    /// The policy this store follows.
    pub fn policy(&self) -> FormatPolicy {
        self.policy
    }

    /// The underlying containers (migration and adoption work on names directly).
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    /// How many reads found only the Old name and fell back to it since start-up.
    pub fn fallback_reads(&self) -> u64 {
        self.fallback_reads.load(Ordering::Relaxed)
    }

    /// Streams the instance's Part-10 file under each name the format writes; returns its
    /// length. Create-only: an existing name fails with [`BlobError::AlreadyExists`].
    pub async fn put_file<S, E>(
        &self,
        instance: &VersionedInstance,
        body: S,
    ) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BodyError>,
    {
        let names = self.write_names(instance, Kind::File, "write");
        self.containers.files.put_stream_create(&names, body).await
    }

    /// Writes the instance's metadata JSON under each name the format writes.
    pub async fn put_metadata(
        &self,
        instance: &VersionedInstance,
        json: Bytes,
    ) -> Result<(), BlobError> {
        let names = self.write_names(instance, Kind::Metadata, "write");
        let stream = futures::stream::iter([Ok::<_, BodyError>(json)]);
        self.containers
            .metadata
            .put_stream_create(&names, stream)
            .await
            .map(drop)
    }

    /// The largest instance file staged whole ([`Self::stage_instance`]).
    pub fn single_put_limit(&self) -> usize {
        self.containers.files.single_put_limit()
    }

    /// Writes a whole instance file (at most [`Self::single_put_limit`] bytes) and its
    /// metadata JSON before its watermark is known, so the writes overlap the reservation
    /// (see [`crate::BlobStore::stage_pair`]).
    pub async fn stage_instance(
        &self,
        file: Vec<Bytes>,
        metadata: Bytes,
    ) -> (Result<StagedBody, BlobError>, Result<StagedBody, BlobError>) {
        BlobStore::stage_pair(
            (&self.containers.files, file),
            (&self.containers.metadata, vec![metadata]),
        )
        .await
    }

    /// Gives a staged instance file each name the format writes; as [`Self::put_file`].
    pub async fn put_staged_file(
        &self,
        instance: &VersionedInstance,
        staged: StagedBody,
    ) -> Result<u64, BlobError> {
        let names = self.write_names(instance, Kind::File, "write");
        self.containers.files.put_staged_body(&names, staged).await
    }

    /// Gives staged metadata each name the format writes; as [`Self::put_metadata`].
    pub async fn put_staged_metadata(
        &self,
        instance: &VersionedInstance,
        staged: StagedBody,
    ) -> Result<(), BlobError> {
        let names = self.write_names(instance, Kind::Metadata, "write");
        self.containers
            .metadata
            .put_staged_body(&names, staged)
            .await
            .map(drop)
    }

    /// Writes the frame-range JSON; it has only the New name, whatever the format.
    pub async fn put_frame_ranges(
        &self,
        watermark: Watermark,
        json: Bytes,
    ) -> Result<(), BlobError> {
        self.containers
            .metadata
            .put_create(&layout::frame_ranges(watermark), json)
            .await
    }

    /// Opens the instance's file for streaming.
    pub async fn get_file(&self, instance: &VersionedInstance) -> Result<BlobRead, BlobError> {
        let files = &self.containers.files;
        self.read(instance, Kind::File, |name| async move {
            files.get(&name).await
        })
        .await
    }

    /// Opens the files of instances from the front of `instances`, as many as
    /// [`crate::BlobStore::get_local_batch`] opens at once within `budget` bytes on a local
    /// filesystem, or the first one elsewhere: at least one when `instances` is not empty.
    pub async fn get_files(
        &self,
        instances: &[VersionedInstance],
        budget: u64,
    ) -> Vec<Result<BlobRead, BlobError>> {
        let Some(first_instance) = instances.first() else {
            return Vec::new();
        };
        let (first, fallback) = self.policy.read_layouts();
        let candidates = instances
            .iter()
            .take(crate::store::MAX_BATCH_BLOBS)
            .map(|instance| {
                std::iter::once(first)
                    .chain(fallback)
                    .map(|layout| name(layout, Kind::File, instance))
                    .collect()
            })
            .collect();
        let Some(opened) = self
            .containers
            .files
            .get_local_batch(candidates, budget)
            .await
        else {
            return vec![self.get_file(first_instance).await];
        };
        opened
            .into_iter()
            .zip(instances)
            .map(|(result, instance)| {
                self.note_layout(instance, first, "read");
                let (used, read) = result?;
                if let (1, Some(fallback)) = (used, fallback) {
                    self.note_fallback(instance);
                    self.note_layout(instance, fallback, "read");
                }
                Ok(read)
            })
            .collect()
    }

    /// Reads a byte range of the instance's file (frame retrieval).
    pub async fn get_file_range(
        &self,
        instance: &VersionedInstance,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        let files = &self.containers.files;
        self.read(instance, Kind::File, |name| {
            let range = range.clone();
            async move { files.get_range(&name, range).await }
        })
        .await
    }

    /// Size and version of the instance's file.
    pub async fn head_file(&self, instance: &VersionedInstance) -> Result<BlobMeta, BlobError> {
        let files = &self.containers.files;
        self.read(instance, Kind::File, |name| async move {
            files.head(&name).await
        })
        .await
    }

    /// The instance's metadata JSON, without the UTF-8 BOM some original files start with.
    pub async fn get_metadata(&self, instance: &VersionedInstance) -> Result<Bytes, BlobError> {
        let metadata = &self.containers.metadata;
        let json = self
            .read(instance, Kind::Metadata, |name| async move {
                metadata.get_bytes(&name).await
            })
            .await?;
        Ok(strip_bom(json))
    }

    /// The frame-range JSON, if the instance has one: the canonical name first, then the
    /// historical name with a space (orig A.3).
    pub async fn get_frame_ranges(&self, watermark: Watermark) -> Result<Option<Bytes>, BlobError> {
        for name in [
            layout::frame_ranges(watermark),
            layout::legacy_spaced_frame_ranges(watermark),
        ] {
            match self.containers.metadata.get_bytes(&name).await {
                Ok(json) => return Ok(Some(strip_bom(json))),
                Err(BlobError::NotFound { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
        Ok(None)
    }

    /// Deletes every blob the instance may have: file and metadata under both layouts (a store
    /// may have been Dual, or be mid-migration, whatever its format is now) and the frame ranges
    /// under both of their names. Missing blobs are not an error, so this can be retried.
    pub async fn delete_instance(&self, instance: &VersionedInstance) -> Result<(), BlobError> {
        for layout in [BlobLayout::New, BlobLayout::Old] {
            self.delete_layout(instance, layout).await?;
        }
        let w = instance.watermark();
        for name in [
            layout::frame_ranges(w),
            layout::legacy_spaced_frame_ranges(w),
        ] {
            self.containers.metadata.delete_if_exists(&name).await?;
        }
        Ok(())
    }

    /// Deletes the file and the metadata of one layout (delete-old removes the Old layout only).
    pub async fn delete_layout(
        &self,
        instance: &VersionedInstance,
        layout: BlobLayout,
    ) -> Result<(), BlobError> {
        self.note_layout(instance, layout, "delete");
        self.containers
            .files
            .delete_if_exists(&layout.file(instance))
            .await?;
        self.containers
            .metadata
            .delete_if_exists(&layout.metadata(instance))
            .await
    }

    fn write_names(&self, instance: &VersionedInstance, kind: Kind, operation: &str) -> Vec<Path> {
        self.policy
            .write_layouts()
            .iter()
            .map(|&layout| {
                self.note_layout(instance, layout, operation);
                name(layout, kind, instance)
            })
            .collect()
    }

    /// Runs `op` on the first name the policy reads, and on the fallback name when the first
    /// blob does not exist.
    async fn read<T, F, Fut>(
        &self,
        instance: &VersionedInstance,
        kind: Kind,
        op: F,
    ) -> Result<T, BlobError>
    where
        F: Fn(Path) -> Fut,
        Fut: Future<Output = Result<T, BlobError>>,
    {
        let (first, fallback) = self.policy.read_layouts();
        self.note_layout(instance, first, "read");
        let result = op(name(first, kind, instance)).await;
        match (result, fallback) {
            (Err(BlobError::NotFound { .. }), Some(fallback)) => {
                self.note_fallback(instance);
                self.note_layout(instance, fallback, "read");
                op(name(fallback, kind, instance)).await
            }
            (result, _) => result,
        }
    }

    fn note_layout(&self, instance: &VersionedInstance, layout: BlobLayout, operation: &str) {
        if layout == BlobLayout::Old && self.policy.log_old_format_usage {
            tracing::info!(watermark = %instance.watermark(), operation, "Using old blob format.");
        }
    }

    fn note_fallback(&self, instance: &VersionedInstance) {
        self.fallback_reads.fetch_add(1, Ordering::Relaxed);
        let first_time = match self.fallback_logged.lock() {
            Ok(mut logged) => {
                if logged.len() >= FALLBACK_LOG_MEMORY {
                    logged.clear();
                }
                logged.insert(instance.watermark())
            }
            Err(_) => true,
        };
        let watermark = instance.watermark();
        match self.policy.format {
            // Expected for every instance the copy has not reached yet.
            FormatType::Dual => tracing::debug!(%watermark, "New blob missing; read the Old name"),
            _ if first_time => {
                tracing::warn!(%watermark, "New blob missing; read the Old name (has the copy finished?)")
            }
            _ => {}
        }
    }
}

fn name(layout: BlobLayout, kind: Kind, instance: &VersionedInstance) -> Path {
    match kind {
        Kind::File => layout.file(instance),
        Kind::Metadata => layout.metadata(instance),
    }
}

/// Some metadata files the original wrote start with a UTF-8 byte order mark (orig A.4).
fn strip_bom(json: Bytes) -> Bytes {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    if json.starts_with(BOM) {
        json.slice(BOM.len()..)
    } else {
        json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bom_is_removed_once() {
        assert_eq!(
            strip_bom(Bytes::from_static(b"\xEF\xBB\xBF{}")),
            Bytes::from_static(b"{}")
        );
        assert_eq!(
            strip_bom(Bytes::from_static(b"{}")),
            Bytes::from_static(b"{}")
        );
    }

    #[test]
    fn layouts_follow_the_format_table() {
        let old = FormatPolicy::new(FormatType::Old);
        let dual = FormatPolicy::new(FormatType::Dual);
        let new = FormatPolicy::new(FormatType::New);
        assert_eq!(old.write_layouts(), [BlobLayout::Old]);
        assert_eq!(dual.write_layouts(), [BlobLayout::Old, BlobLayout::New]);
        assert_eq!(new.write_layouts(), [BlobLayout::New]);
        assert_eq!(old.read_layouts(), (BlobLayout::Old, None));
        assert_eq!(
            dual.read_layouts(),
            (BlobLayout::New, Some(BlobLayout::Old))
        );
        assert_eq!(new.read_layouts(), (BlobLayout::New, Some(BlobLayout::Old)));
        let strict = FormatPolicy {
            read_fallback: false,
            ..new
        };
        assert_eq!(strict.read_layouts(), (BlobLayout::New, None));
        let strict_dual = FormatPolicy {
            read_fallback: false,
            ..dual
        };
        assert_eq!(
            strict_dual.read_layouts(),
            (BlobLayout::New, Some(BlobLayout::Old))
        );
    }
}
