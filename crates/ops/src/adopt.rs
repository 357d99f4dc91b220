//! Adoption: building the index from the blobs of a container the original server wrote (and
//! Tessera's own disaster recovery). Never modifies or deletes a blob; it writes index rows and,
//! where one is missing, a metadata or frame-range blob under the names the format prescribes.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::TryStreamExt;
use std::time::Duration;
use tessera_blob::layout::{self, BlobKind, ParsedName, STAGING_PREFIX};
use tessera_blob::{BlobError, BlobLayout, BlobName, BlobStore, InstanceBlobStore};
use tessera_core::{
    ContentChecksum, InstanceIdentifier, SearchableAttributes, VersionedInstance, Watermark,
};
use tessera_dicom::{FragmentScanner, FrameRanges, HeaderReader, InstanceHeader, PixelData};

use tessera_index::{
    Acquisition, Adoption, FoundInstance, InstanceIndex, NewInstance, OperationResults,
    OperationStatus,
};

/// Blobs read per listing page; progress is reported and checkpointed per page.
const PAGE: usize = 500;

/// What an adoption found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptionReport {
    /// Instances adopted whose file has only an Old name.
    pub adopted_old: u64,
    /// Instances adopted whose file has only a New name.
    pub adopted_new: u64,
    /// Instances adopted whose file has both names.
    pub adopted_dual: u64,
    /// Instances the index had already (an earlier, interrupted run).
    pub already_indexed: u64,
    /// Metadata blobs written where none existed.
    pub metadata_written: u64,
    /// Frame-range blobs written where none existed.
    pub frame_ranges_written: u64,
    /// Blobs left alone, each with why: `(reason, container/name)`.
    pub reported: Vec<(String, String)>,
    /// File blobs looked at so far.
    pub scanned: u64,
}

impl AdoptionReport {
    /// Instances adopted in all.
    pub fn adopted(&self) -> u64 {
        self.adopted_old + self.adopted_new + self.adopted_dual
    }

    fn report(&mut self, reason: &str, store: &BlobStore, name: &str) {
        self.reported
            .push((reason.to_owned(), format!("{}/{name}", store.container())));
    }

    /// Reported blobs counted by reason.
    pub fn reasons(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for (reason, _) in &self.reported {
            *counts.entry(reason.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// An instance file read from the store.
struct ReadInstance {
    header: InstanceHeader,
    length: u64,
    checksum: String,
    ranges: Option<FrameRanges>,
}

/// Streams a file blob once: its header (only the bytes before the pixel data are kept), its
/// length and checksum, and its fragment ranges.
async fn read_instance(
    store: &BlobStore,
    name: &BlobName,
) -> Result<Result<ReadInstance, String>, BlobError> {
    let mut stream = store.get(name).await?.stream;
    let mut reader = HeaderReader::new();
    let mut header: Option<InstanceHeader> = None;
    let mut scanner: Option<FragmentScanner> = None;
    let mut checksum = ContentChecksum::new();
    while let Some(chunk) = stream.try_next().await? {
        let offset = checksum.length();
        checksum.update(&chunk);
        match (&header, &mut scanner) {
            (Some(_), Some(scanner)) => scanner.feed(offset, &chunk),
            (Some(_), None) => {}
            (None, _) => match reader.push(&chunk) {
                Ok(Some(found)) => {
                    if let Some(PixelData::Encapsulated { items_offset }) = found.pixel_data() {
                        let mut fragments = FragmentScanner::new(items_offset);
                        fragments.feed(0, reader.prefix());
                        scanner = Some(fragments);
                    }
                    header = Some(found);
                }
                Ok(None) => {}
                Err(error) => return Ok(Err(error.to_string())),
            },
        }
    }
    let header = match header {
        Some(header) => header,
        None => match reader.finish() {
            Ok(header) => header,
            Err(error) => return Ok(Err(error.to_string())),
        },
    };
    let ranges = match (header.pixel_data(), &scanner) {
        (Some(PixelData::Native { offset, length }), _) => header
            .native_frame_size()
            .and_then(|size| FrameRanges::native(offset, size, header.frame_count(), length)),
        (_, Some(scanner)) => scanner.frame_ranges(header.frame_count()),
        _ => None,
    };
    Ok(Ok(ReadInstance {
        header,
        length: checksum.length(),
        checksum: checksum.value(),
        ranges,
    }))
}

/// Adopts every instance in the file container of `blobs`, reporting what it leaves alone.
/// With `dry_run`, only counts and reports (nothing is written, not even index rows).
/// `progress` is called after each page.
pub async fn adopt(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    dry_run: bool,
    progress: impl FnMut(&AdoptionReport),
) -> Result<AdoptionReport, crate::OperationError> {
    let owner = uuid::Uuid::new_v4().simple().to_string();
    if dry_run {
        return scan(index, blobs, true, &owner, progress).await;
    }
    take_adoption(index, &owner).await?;
    let result = scan(index, blobs, false, &owner, progress).await;
    if let Err(error) = &result {
        release_failed_adoption(index, &owner, error).await;
    }
    result
}

/// Marks a failed adoption `failed`, releasing its lease, so that a re-run can start at once
/// (it skips what is already indexed) instead of waiting out the lease.
async fn release_failed_adoption(
    index: &InstanceIndex,
    owner: &str,
    error: &crate::OperationError,
) {
    let mut results = OperationResults {
        failed: 1,
        ..OperationResults::default()
    };
    results.push_error(error.to_string());
    let finished = index
        .finish_operation(
            ADOPTION_OPERATION_ID,
            owner,
            OperationStatus::Failed,
            "{}",
            &results.to_json(),
        )
        .await;
    if let Err(release) = finished {
        tracing::warn!(%release, "could not mark a failed adoption; a re-run waits for its lease");
    }
}

/// One pass over both containers, adopting what is not indexed yet.
async fn scan(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    dry_run: bool,
    owner: &str,
    mut progress: impl FnMut(&AdoptionReport),
) -> Result<AdoptionReport, crate::OperationError> {
    let containers = blobs.containers();
    let files = &containers.files;
    let mut report = AdoptionReport::default();
    // Watermarks of every recognised file name, to tell orphan metadata apart.
    let mut file_watermarks: HashSet<u64> = HashSet::new();
    // Dry runs keep the best watermark per SOP instance here (a real run uses the index).
    let mut dry_best: HashMap<String, u64> = HashMap::new();
    let mut listing = files.list(None);
    let mut page = Vec::with_capacity(PAGE);
    let mut pages = 0u64;
    loop {
        let next = listing.try_next().await?;
        let end = next.is_none();
        if let Some(meta) = next {
            page.push(meta.name);
        }
        if page.len() < PAGE && !end {
            continue;
        }
        for name in page.drain(..) {
            report.scanned += 1;
            adopt_one_with_retries(
                index,
                blobs,
                dry_run,
                &name,
                &mut report,
                &mut file_watermarks,
                &mut dry_best,
            )
            .await?;
        }
        progress(&report);
        pages += 1;
        if !dry_run && !save_adoption(index, owner, pages, &report, false).await? {
            return Err(crate::OperationError::LeaseLost);
        }
        if end {
            break;
        }
    }
    let metadata = &containers.metadata;
    let mut listing = metadata.list(None);
    while let Some(meta) = listing.try_next().await? {
        let name = meta.name.to_string();
        match layout::parse_name(&name) {
            _ if name.starts_with(STAGING_PREFIX) => {}
            Some(ParsedName::Old {
                instance,
                kind: BlobKind::Metadata,
            }) if !file_watermarks.contains(&instance.watermark().get()) => {
                report.report("metadata-without-file", metadata, &name);
            }
            Some(ParsedName::New {
                watermark,
                kind: BlobKind::Metadata | BlobKind::FrameRanges,
                ..
            }) if !file_watermarks.contains(&watermark.get()) => {
                report.report("metadata-without-file", metadata, &name);
            }
            Some(
                ParsedName::Old {
                    kind: BlobKind::Metadata,
                    ..
                }
                | ParsedName::New {
                    kind: BlobKind::Metadata | BlobKind::FrameRanges,
                    ..
                },
            ) => {}
            _ => report.report("unrecognised-name", metadata, &name),
        }
    }
    progress(&report);
    if !dry_run {
        save_adoption(index, owner, pages, &report, true).await?;
    }
    Ok(report)
}

/// The fixed id of the adoption operation (`GET /operations/{id}` shows its progress).
pub const ADOPTION_OPERATION_ID: &str = "7e55e7a0ad0b4c0f9d6e0a0b7a5d0001";
/// How long an adoption holds its operation between two pages.
const ADOPTION_LEASE: Duration = Duration::from_secs(600);

/// Takes the adoption operation: a new run, or the resumption of one that died (its lease
/// expired); a finished one is started anew. Two adoptions never run at once.
async fn take_adoption(index: &InstanceIndex, owner: &str) -> Result<(), crate::OperationError> {
    let empty = OperationResults::default().to_json();
    for _ in 0..2 {
        match index
            .acquire_operation(
                ADOPTION_OPERATION_ID,
                "adopt",
                owner,
                ADOPTION_LEASE,
                "{}",
                &empty,
            )
            .await?
        {
            Acquisition::Acquired(_) => return Ok(()),
            Acquisition::AlreadySucceeded(_) => {
                index.delete_operation(ADOPTION_OPERATION_ID).await?
            }
            Acquisition::HeldElsewhere(_) => return Err(crate::OperationError::HeldElsewhere),
        }
    }
    Err(crate::OperationError::HeldElsewhere)
}

/// Checkpoints the adoption after a page (or finishes it): pages done and counts so far.
async fn save_adoption(
    index: &InstanceIndex,
    owner: &str,
    pages: u64,
    report: &AdoptionReport,
    done: bool,
) -> Result<bool, crate::OperationError> {
    let checkpoint = serde_json::json!({
        "pagesDone": pages,
        "adopted": report.adopted(),
        "alreadyIndexed": report.already_indexed,
        "reported": report.reported.len(),
    })
    .to_string();
    let results = OperationResults {
        total: report.scanned,
        processed: report.scanned,
        skipped: report.reported.len() as u64,
        ..OperationResults::default()
    }
    .to_json();
    Ok(if done {
        index
            .finish_operation(
                ADOPTION_OPERATION_ID,
                owner,
                OperationStatus::Succeeded,
                &checkpoint,
                &results,
            )
            .await?
    } else {
        index
            .checkpoint_operation(
                ADOPTION_OPERATION_ID,
                owner,
                ADOPTION_LEASE,
                &checkpoint,
                &results,
            )
            .await?
    })
}

/// Attempts of one blob before a transient blob-store error ends the adoption.
const ATTEMPTS: u32 = 4;

/// [`adopt_one`], again after a transient blob-store error (0.1 s, 0.3 s, 0.9 s apart): one
/// flaky read should not end the adoption of a large container. Each attempt starts over, as
/// if the blob had not been seen.
#[allow(clippy::too_many_arguments)]
async fn adopt_one_with_retries(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    dry_run: bool,
    name: &BlobName,
    report: &mut AdoptionReport,
    file_watermarks: &mut HashSet<u64>,
    dry_best: &mut HashMap<String, u64>,
) -> Result<(), crate::OperationError> {
    let watermark = match layout::parse_name(name.as_ref()) {
        Some(ParsedName::Old {
            instance,
            kind: BlobKind::File,
        }) => Some(instance.watermark().get()),
        Some(ParsedName::New {
            watermark,
            kind: BlobKind::File,
            ..
        }) => Some(watermark.get()),
        _ => None,
    };
    let seen_before = watermark.is_some_and(|w| file_watermarks.contains(&w));
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let outcome = adopt_one(
            index,
            blobs,
            dry_run,
            name,
            report,
            file_watermarks,
            dry_best,
        )
        .await;
        match outcome {
            Err(crate::OperationError::Blob(
                BlobError::Store { .. } | BlobError::Incomplete { .. },
            )) if attempt < ATTEMPTS => {
                if let Some(w) = watermark.filter(|_| !seen_before) {
                    file_watermarks.remove(&w);
                }
                tokio::time::sleep(delay).await;
                delay *= 3;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn adopt_one(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    dry_run: bool,
    name: &BlobName,
    report: &mut AdoptionReport,
    file_watermarks: &mut HashSet<u64>,
    dry_best: &mut HashMap<String, u64>,
) -> Result<(), crate::OperationError> {
    let files = &blobs.containers().files;
    let text = name.to_string();
    if text.starts_with(STAGING_PREFIX) {
        return Ok(());
    }
    let (watermark, layout, named) = match layout::parse_name(&text) {
        Some(ParsedName::Old {
            instance,
            kind: BlobKind::File,
        }) => (instance.watermark(), BlobLayout::Old, Some(instance)),
        Some(ParsedName::New {
            watermark,
            kind: BlobKind::File,
            prefix_matches: true,
        }) => (watermark, BlobLayout::New, None),
        Some(ParsedName::New {
            watermark,
            kind: BlobKind::File,
            prefix_matches: false,
        }) => {
            file_watermarks.insert(watermark.get());
            report.report("prefix-mismatch", files, &text);
            return Ok(());
        }
        _ => {
            report.report("unrecognised-name", files, &text);
            return Ok(());
        }
    };
    if !file_watermarks.insert(watermark.get()) {
        // The second name of a Dual pair: the instance was handled with the first.
        return Ok(());
    }
    if !dry_run
        && index
            .instance_by_watermark(watermark.get())
            .await?
            .is_some()
    {
        report.already_indexed += 1;
        return Ok(());
    }
    let read = match read_instance(files, name).await {
        Ok(Ok(read)) => read,
        Ok(Err(reason)) => {
            report.report("not-dicom", files, &text);
            tracing::debug!(%reason, name = %text, "not adopted");
            return Ok(());
        }
        Err(BlobError::NotFound { .. }) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    let id = match read.header.identifier() {
        Ok(id) => id,
        Err(_) => {
            report.report("invalid-uids", files, &text);
            return Ok(());
        }
    };
    if named.as_ref().is_some_and(|n| n.id() != &id) {
        report.report("uids-disagree", files, &text);
        return Ok(());
    }
    let instance = VersionedInstance::new(id.clone(), watermark);
    let other = match layout {
        BlobLayout::Old => BlobLayout::New.file(&instance),
        BlobLayout::New => BlobLayout::Old.file(&instance),
    };
    let dual = files.exists(&other).await?;
    let key = format!("{}/{}/{}", id.study, id.series, id.sop);
    if dry_run {
        match dry_best.get(&key).copied() {
            Some(best) if best > watermark.get() => report.report("leftover", files, &text),
            Some(best) => {
                report.reported.push((
                    "leftover".into(),
                    format!("{}/{key} at watermark {best}", files.container()),
                ));
                dry_best.insert(key, watermark.get());
            }
            None => {
                dry_best.insert(key, watermark.get());
                count(report, layout, dual);
            }
        }
        return Ok(());
    }
    let has_frame_ranges = ensure_side_blobs(blobs, &instance, &read, report).await?;
    let attributes = read
        .header
        .searchable_attributes()
        .unwrap_or_else(|_| SearchableAttributes {
            sop_class_uid: read
                .header
                .string(tessera_dicom::tags::SOP_CLASS_UID)
                .unwrap_or_default(),
            ..SearchableAttributes::default()
        });
    let found = FoundInstance {
        instance: NewInstance {
            id,
            transfer_syntax: read.header.transfer_syntax().to_owned(),
            attributes,
            // Adopted instances keep the frame-range blobs the original wrote (or that adoption
            // writes in their place).
            native_frames: None,
        },
        watermark,
        content_length: read.length,
        checksum: read.checksum,
        has_frame_ranges,
    };
    match index.adopt(&found).await? {
        Adoption::Adopted => count(report, layout, dual),
        Adoption::AlreadyIndexed => {}
        Adoption::Replaced(lower) => {
            // The lower watermark was counted when adopted; this one takes its place.
            let lower_name = leftover_name(files, &found.instance.id, lower).await;
            report.reported.push((
                "leftover".into(),
                format!("{}/{lower_name}", files.container()),
            ));
        }
        Adoption::Leftover(_) => report.report("leftover", files, &text),
    }
    Ok(())
}

fn count(report: &mut AdoptionReport, layout: BlobLayout, dual: bool) {
    match (dual, layout) {
        (true, _) => report.adopted_dual += 1,
        (false, BlobLayout::Old) => report.adopted_old += 1,
        (false, BlobLayout::New) => report.adopted_new += 1,
    }
}

/// The name of the replaced (lower) watermark's file, for the report: its Old name where that
/// exists, else its New name.
async fn leftover_name(files: &BlobStore, id: &InstanceIdentifier, lower: Watermark) -> String {
    let instance = VersionedInstance::new(id.clone(), lower);
    let old = BlobLayout::Old.file(&instance);
    match files.exists(&BlobName::from(old.as_ref())).await {
        Ok(true) => old.to_string(),
        _ => BlobLayout::New.file(&instance).to_string(),
    }
}

/// Writes the metadata (under the names the format writes) and the frame ranges where none
/// exist; returns whether the instance has frame ranges.
async fn ensure_side_blobs(
    blobs: &InstanceBlobStore,
    instance: &VersionedInstance,
    read: &ReadInstance,
    report: &mut AdoptionReport,
) -> Result<bool, crate::OperationError> {
    let metadata = &blobs.containers().metadata;
    let has_metadata = metadata.exists(&BlobLayout::New.metadata(instance)).await?
        || metadata.exists(&BlobLayout::Old.metadata(instance)).await?;
    if let Some(json) = read.header.metadata_json().ok().filter(|_| !has_metadata) {
        blobs.put_metadata(instance, json.into()).await?;
        report.metadata_written += 1;
    }
    if blobs
        .get_frame_ranges(instance.watermark())
        .await?
        .is_some()
    {
        return Ok(true);
    }
    match &read.ranges {
        Some(ranges) => {
            blobs
                .put_frame_ranges(instance.watermark(), ranges.to_json().into())
                .await?;
            report.frame_ranges_written += 1;
            Ok(true)
        }
        None => Ok(false),
    }
}
