//! What copy, delete-old and cleanup-deleted do to one instance.

use std::future::Future;
use std::time::Duration;

use futures::TryStreamExt;
use tessera_blob::{BlobError, BlobLayout, BlobName, BlobStore, CopyBatch, InstanceBlobStore};
use tessera_core::{ContentChecksum, VersionedInstance};
use tessera_index::{InstanceIndex, StoredInstance};

/// Attempts of one blob operation before a transient error counts as a failure.
const ATTEMPTS: u32 = 4;

/// Runs `op` again after a transient blob-store error, with backoff (0.1 s, 0.3 s, 0.9 s).
pub(crate) async fn with_retries<T, F, Fut>(mut op: F) -> Result<T, BlobError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BlobError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(BlobError::Store { .. } | BlobError::Incomplete { .. }) if attempt < ATTEMPTS => {
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The outcome of verifying an instance's New blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Both New blobs exist and match.
    Verified,
    /// Something is missing or differs; the message says what.
    Failed(String),
}

/// Streams a blob and returns its length and checksum.
async fn measure(store: &BlobStore, name: &BlobName) -> Result<(u64, String), BlobError> {
    let read = store.get(name).await?;
    let mut checksum = ContentChecksum::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.try_next().await? {
        checksum.update(&chunk);
    }
    Ok((checksum.length(), checksum.value()))
}

/// Checks an instance's New file against the length and checksum in the index (measured from
/// the Old file, and recorded, when the index has none), and its New metadata against the Old
/// metadata where that still exists. Never trusts mere existence (orig G.2, G.3).
pub async fn verify_new_blobs(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    stored: &StoredInstance,
) -> Result<Verification, BlobError> {
    let instance = &stored.instance;
    let containers = blobs.containers();
    let expected = match (stored.content_length, &stored.checksum) {
        (Some(length), Some(checksum)) => (length, checksum.clone()),
        _ => {
            let measured = {
                let old_file = BlobLayout::Old.file(instance);
                with_retries(|| measure(&containers.files, &old_file)).await
            };
            match measured {
                Ok(measured) => {
                    if let Err(error) = index
                        .record_content(instance.watermark().get(), measured.0, &measured.1)
                        .await
                    {
                        tracing::warn!(%error, "could not record a measured checksum");
                    }
                    measured
                }
                Err(BlobError::NotFound { .. }) => {
                    return Ok(Verification::Failed(
                        "no checksum recorded and no Old file to measure".into(),
                    ));
                }
                Err(error) => return Err(error),
            }
        }
    };
    // The three reads at once: each is a short wait on the store (on a filesystem, a hop to a
    // blocking thread), so a round keeps more of them in flight. Judged in order below.
    let new_file = BlobLayout::New.file(instance);
    let new_metadata = BlobLayout::New.metadata(instance);
    let old_metadata = BlobLayout::Old.metadata(instance);
    let (file, new_bytes, old_bytes) = futures::join!(
        with_retries(|| measure(&containers.files, &new_file)),
        with_retries(|| containers.metadata.get_bytes(&new_metadata)),
        with_retries(|| containers.metadata.get_bytes(&old_metadata)),
    );
    match file {
        Ok(actual) if actual == expected => {}
        Ok((length, checksum)) => {
            return Ok(Verification::Failed(format!(
                "New file {new_file} has {length} bytes and {checksum}; expected {} bytes and {}",
                expected.0, expected.1
            )));
        }
        Err(BlobError::NotFound { .. }) => {
            return Ok(Verification::Failed(format!(
                "New file {new_file} is missing"
            )));
        }
        Err(error) => return Err(error),
    }
    let new_bytes = match new_bytes {
        Ok(bytes) => bytes,
        Err(BlobError::NotFound { .. }) => {
            return Ok(Verification::Failed(format!(
                "New metadata {new_metadata} is missing"
            )));
        }
        Err(error) => return Err(error),
    };
    match old_bytes {
        Ok(old_bytes) if old_bytes != new_bytes => Ok(Verification::Failed(format!(
            "New metadata {new_metadata} differs from the Old metadata"
        ))),
        Ok(_) | Err(BlobError::NotFound { .. }) => Ok(Verification::Verified),
        Err(error) => Err(error),
    }
}

/// The copies of one round, in both containers: they become durable together at
/// [`RoundCopies::sync`], which the round runs before it records any of them as done (failures
/// cleared, checkpoint). On a filesystem this is one fsync per folder per round instead of one
/// per copied blob; elsewhere a copy is durable when it returns.
pub(crate) struct RoundCopies {
    files: CopyBatch,
    metadata: CopyBatch,
}

impl RoundCopies {
    pub(crate) fn new(blobs: &InstanceBlobStore) -> Self {
        let containers = blobs.containers();
        Self {
            files: containers.files.copy_batch(),
            metadata: containers.metadata.copy_batch(),
        }
    }

    /// Makes every copy of the round durable (again, harmlessly, if called twice); both
    /// containers at once.
    pub(crate) async fn sync(&self) -> Result<(), BlobError> {
        let (files, metadata) = futures::join!(
            with_retries(|| self.files.sync()),
            with_retries(|| self.metadata.sync()),
        );
        files.and(metadata)
    }
}

/// What copying one instance did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CopyOutcome {
    pub copied: u64,
    pub already_present: u64,
}

/// Copies an instance's Old file and metadata to their New names (create-only; an existing
/// New blob is kept and then verified), then verifies. A New blob that fails verification and
/// was not just made is replaced once from the Old blob, but only when the Old file exists and
/// itself matches the recorded length and checksum: otherwise the New blob may be the last copy
/// there is, so both are kept and the instance is reported as failed.
///
/// The copies join `copies`: they are durable once the round syncs it.
pub(crate) async fn copy_instance(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    copies: &RoundCopies,
    stored: &StoredInstance,
) -> Result<CopyOutcome, String> {
    let instance = &stored.instance;
    let mut outcome = CopyOutcome::default();
    copy_both(blobs, copies, instance, &mut outcome).await?;
    match verify_new_blobs(index, blobs, stored)
        .await
        .map_err(|e| e.to_string())?
    {
        Verification::Verified => Ok(outcome),
        Verification::Failed(reason) if outcome.copied == 0 => {
            if let Err(why_not) = verify_old_file(index, blobs, stored).await {
                return Err(format!(
                    "{reason}; not replaced, because {why_not}; both files are kept"
                ));
            }
            tracing::warn!(watermark = %instance.watermark(), %reason, "replacing a New blob that does not verify from a verified Old blob");
            let containers = blobs.containers();
            let old_metadata = BlobLayout::Old.metadata(instance);
            let replace = async {
                containers
                    .files
                    .delete_if_exists(&BlobLayout::New.file(instance))
                    .await?;
                // Without Old metadata to copy again, the New metadata is the only one left.
                if containers.metadata.exists(&old_metadata).await? {
                    containers
                        .metadata
                        .delete_if_exists(&BlobLayout::New.metadata(instance))
                        .await?;
                }
                Ok::<(), BlobError>(())
            };
            replace.await.map_err(|e| e.to_string())?;
            let mut again = CopyOutcome::default();
            copy_both(blobs, copies, instance, &mut again).await?;
            match verify_new_blobs(index, blobs, stored)
                .await
                .map_err(|e| e.to_string())?
            {
                Verification::Verified => Ok(again),
                Verification::Failed(reason) => Err(reason),
            }
        }
        Verification::Failed(reason) => Err(reason),
    }
}

/// Checks that the instance's Old file exists and matches the length and checksum the index
/// records for it (measured from the Old file itself when the instance had none, which
/// `verify_new_blobs` has just recorded). The error says why the Old file cannot be trusted.
async fn verify_old_file(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    stored: &StoredInstance,
) -> Result<(), String> {
    let instance = &stored.instance;
    let recorded = match (stored.content_length, &stored.checksum) {
        (Some(length), Some(checksum)) => Some((length, checksum.clone())),
        _ => index
            .instance_by_watermark(instance.watermark().get())
            .await
            .map_err(|e| format!("the index could not be read: {e}"))?
            .and_then(|now| Some((now.content_length?, now.checksum?))),
    };
    let Some(expected) = recorded else {
        return Err("no length and checksum are recorded to check the Old file against".into());
    };
    let old_file = BlobLayout::Old.file(instance);
    match with_retries(|| measure(&blobs.containers().files, &old_file)).await {
        Ok(actual) if actual == expected => Ok(()),
        Ok((length, checksum)) => Err(format!(
            "the Old file {old_file} has {length} bytes and {checksum}, not the recorded {} bytes and {}",
            expected.0, expected.1
        )),
        Err(BlobError::NotFound { .. }) => Err(format!("the Old file {old_file} is missing")),
        Err(error) => Err(format!(
            "the Old file {old_file} could not be read: {error}"
        )),
    }
}

/// Copies the file and the metadata (at once: they are independent) and counts what was
/// copied and what was there already.
async fn copy_both(
    blobs: &InstanceBlobStore,
    copies: &RoundCopies,
    instance: &VersionedInstance,
    outcome: &mut CopyOutcome,
) -> Result<(), String> {
    let containers = blobs.containers();
    let (file, metadata) = futures::join!(
        copy_one(
            &containers.files,
            &copies.files,
            BlobLayout::Old.file(instance),
            BlobLayout::New.file(instance),
        ),
        copy_one(
            &containers.metadata,
            &copies.metadata,
            BlobLayout::Old.metadata(instance),
            BlobLayout::New.metadata(instance),
        ),
    );
    for copied in [file?, metadata?] {
        if copied {
            outcome.copied += 1;
        } else {
            outcome.already_present += 1;
        }
    }
    Ok(())
}

/// Copies `old` to `new` in `batch`, create-only: true when it copied, false when `new` was
/// there already (whether `old` still is or not).
async fn copy_one(
    store: &BlobStore,
    batch: &CopyBatch,
    old: BlobName,
    new: BlobName,
) -> Result<bool, String> {
    match with_retries(|| batch.copy_create(&old, &new)).await {
        Ok(()) => Ok(true),
        Err(BlobError::AlreadyExists { .. }) => Ok(false),
        Err(BlobError::NotFound { .. }) => match store.exists(&new).await {
            Ok(true) => Ok(false),
            Ok(false) => Err(format!("neither {old} nor {new} exists")),
            Err(error) => Err(error.to_string()),
        },
        Err(error) => Err(error.to_string()),
    }
}

/// What delete-old did to one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeleteOutcome {
    /// Its Old blobs were deleted after its New blobs verified.
    Deleted,
    /// It had no Old blobs.
    NothingToDelete,
}

/// Deletes an instance's Old file and metadata, but only after its New blobs verify; the file
/// first, then the metadata (a crash between the two leaves the metadata, which the next run
/// deletes once the New blobs verify again).
pub(crate) async fn delete_old(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    stored: &StoredInstance,
) -> Result<DeleteOutcome, String> {
    let instance = &stored.instance;
    let containers = blobs.containers();
    let old_file = BlobLayout::Old.file(instance);
    let old_metadata = BlobLayout::Old.metadata(instance);
    let (file_exists, metadata_exists) = futures::join!(
        with_retries(|| containers.files.exists(&old_file)),
        with_retries(|| containers.metadata.exists(&old_metadata)),
    );
    let file_exists = file_exists.map_err(|e| e.to_string())?;
    let metadata_exists = metadata_exists.map_err(|e| e.to_string())?;
    if !file_exists && !metadata_exists {
        return Ok(DeleteOutcome::NothingToDelete);
    }
    match verify_new_blobs(index, blobs, stored)
        .await
        .map_err(|e| e.to_string())?
    {
        Verification::Verified => {}
        Verification::Failed(reason) => return Err(reason),
    }
    with_retries(|| blobs.delete_layout(instance, BlobLayout::Old))
        .await
        .map_err(|e| e.to_string())?;
    Ok(DeleteOutcome::Deleted)
}

/// Force-deletes the Old blobs of a deleted instance (cleanup-deleted).
pub(crate) async fn delete_old_of_deleted(
    blobs: &InstanceBlobStore,
    instance: &VersionedInstance,
) -> Result<(), String> {
    with_retries(|| blobs.delete_layout(instance, BlobLayout::Old))
        .await
        .map_err(|e| e.to_string())
}
