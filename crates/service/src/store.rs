//! STOW: one instance from a request body to a `Created` row (contract §5).

use std::pin::pin;
use std::task::Poll;

use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use tessera_blob::{BlobError, BodyError, StagedBody};
use tessera_core::{
    ContentChecksum, InstanceIdentifier, SearchableAttributes, Uid, VersionedInstance, Watermark,
};
use tessera_dicom::{
    DataSetWalker, DicomError, FrameRanges, HeaderReader, InstanceHeader, PixelData,
    ValidationError,
};
use tessera_index::{IndexError, NativeFrames, NewInstance};

use crate::DicomService;

/// The API version a request came in on; v1 and v2 validate differently (orig D.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/v1`.
    V1,
    /// `/v2`.
    V2,
}

/// Failure reasons of orig D.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// 272: storage or index failure after the instance was reserved, or anything unexpected.
    ProcessingFailure = 272,
    /// 43264: not DICOM, or a required attribute missing or invalid.
    ValidationFailure = 43264,
    /// 43265: the StudyInstanceUID differs from the one in the URL.
    StudyUidMismatch = 43265,
    /// 45070: the same instance exists.
    AlreadyExists = 45070,
    /// 45071: the same instance is being created.
    BeingCreated = 45071,
}

/// Warning reasons of orig D.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningReason {
    /// 1 (v2): attributes failed validation; they were left out of the metadata and the index.
    DatasetHasValidationWarnings = 1,
    /// 45063: the data set is Implicit VR Little Endian.
    DatasetDoesNotMatchSopClass = 45063,
}

/// What happened to one instance of a STOW request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored and visible.
    Stored {
        /// The instance's UIDs.
        id: InstanceIdentifier,
        /// SOP Class UID.
        sop_class_uid: String,
        /// Warnings, if any.
        warnings: Vec<WarningReason>,
        /// v2: one comment per attribute that failed validation.
        failed_attributes: Vec<String>,
    },
    /// Not stored.
    Failed {
        /// SOP Class UID, when readable.
        sop_class_uid: Option<String>,
        /// SOP Instance UID, when readable.
        sop_instance_uid: Option<String>,
        /// Why.
        reason: FailureReason,
        /// A message for the client.
        comment: String,
        /// The attributes that caused the failure, one comment each in the original's
        /// `DICOM100: (gggg,eeee) - …` form (its FailedAttributesSequence); empty when the
        /// failure is not about attributes.
        failed_attributes: Vec<String>,
    },
}

/// What was read of an instance's body while it was being reserved.
enum ReadAhead {
    /// All of it, checked: its file and metadata, each written (or failed) without a name yet.
    Whole(Box<(Result<StagedBody, BlobError>, Result<StagedBody, BlobError>)>),
    /// More than one put holds: what was read; the rest is still in the request.
    Streaming(Vec<Bytes>),
    /// All of it, and it is not a complete instance (the tee holds why).
    Invalid,
    /// The request body failed.
    BodyFailed(BodyError),
}

/// Follows the bytes as they stream to the blob store: length, checksum, and the walk of the
/// element structure that proves the instance complete and finds its fragments.
struct Tee {
    checksum: ContentChecksum,
    walker: Option<DataSetWalker>,
    /// Why the bytes are not a complete instance, once known.
    invalid: Option<DicomError>,
}

impl Tee {
    fn observe(&mut self, chunk: &Bytes) -> Result<(), DicomError> {
        if let Some(walker) = &mut self.walker
            && let Err(error) = walker.feed(self.checksum.length(), chunk)
        {
            self.invalid = Some(error.clone());
            return Err(error);
        }
        self.checksum.update(chunk);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), DicomError> {
        if let Some(walker) = &self.walker
            && let Err(error) = walker.finish(self.checksum.length())
        {
            self.invalid = Some(error.clone());
            return Err(error);
        }
        Ok(())
    }
}

impl DicomService {
    /// Stores one instance read from `body`. The header is buffered (to learn the UIDs before
    /// any blob name exists); the rest streams to the blob store. Never fails as a whole: every
    /// problem is a [`StoreOutcome::Failed`], and nothing is left half-stored.
    pub async fn store<S, E>(
        &self,
        body: S,
        expected_study: Option<&Uid>,
        version: ApiVersion,
    ) -> StoreOutcome
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: Into<BodyError>,
    {
        // Fused: an instance without pixel data ends in the header phase, and the rest of the
        // store then asks the same body once more.
        let mut body = pin!(body.fuse());
        let mut reader = HeaderReader::with_limits(&self.settings.limits);
        let mut header = loop {
            let read = match body.next().await {
                Some(Ok(chunk)) => reader.push(&chunk),
                Some(Err(error)) => {
                    let error: BodyError = error.into();
                    let comment = format!("the request body failed: {error}");
                    return failed(None, FailureReason::ProcessingFailure, comment);
                }
                None => reader.finish().map(Some),
            };
            match read {
                Ok(Some(header)) => break header,
                Ok(None) => {}
                Err(error) => {
                    return failed(None, FailureReason::ValidationFailure, error.to_string());
                }
            }
        };
        let (prefix, walker) = reader.into_parts();
        let prefix = Bytes::from(prefix);
        let (id, attributes, failed_attributes) =
            match validate(&mut header, expected_study, version) {
                Ok(valid) => valid,
                Err(outcome) => return *outcome,
            };
        let mut warnings = Vec::new();
        if header.is_implicit_vr() {
            warnings.push(WarningReason::DatasetDoesNotMatchSopClass);
        }
        if !failed_attributes.is_empty() {
            warnings.push(WarningReason::DatasetHasValidationWarnings);
        }
        // Native frames follow from the header alone, and go to the index with the row.
        let native_frames = match header.pixel_data() {
            Some(PixelData::Native { offset, length }) => header
                .native_frame_size()
                .and_then(|size| NativeFrames::fitting(offset, size, header.frame_count(), length)),
            _ => None,
        };
        let new = NewInstance {
            id: id.clone(),
            transfer_syntax: header.transfer_syntax().to_owned(),
            attributes: attributes.clone(),
            native_frames,
        };
        let mut tee = Tee {
            checksum: ContentChecksum::new(),
            walker,
            invalid: None,
        };
        let metadata = match header.metadata_json() {
            Ok(metadata) => Bytes::from(metadata),
            Err(error) => {
                tracing::error!(%error, "could not write an instance's metadata");
                return processing_failure(&header, &id);
            }
        };
        // While the index reserves the watermark, the rest of a small instance is read and
        // checked, and its file and metadata are written, durable but unnamed; they get their
        // names once both are done. A larger instance streams to its names after that.
        let limit = self.blobs.single_put_limit();
        let read_ahead = async {
            let mut head = vec![prefix];
            let mut buffered = head.iter().map(Bytes::len).sum::<usize>();
            while buffered <= limit {
                match body.next().await {
                    None => {
                        let checked = head
                            .iter()
                            .try_for_each(|chunk| tee.observe(chunk))
                            .and_then(|()| tee.finish());
                        if checked.is_err() {
                            return ReadAhead::Invalid;
                        }
                        let (file, metadata) =
                            self.blobs.stage_instance(head, metadata.clone()).await;
                        return ReadAhead::Whole(Box::new((file, metadata)));
                    }
                    Some(Ok(chunk)) => {
                        buffered = buffered.saturating_add(chunk.len());
                        head.push(chunk);
                    }
                    Some(Err(error)) => return ReadAhead::BodyFailed(error.into()),
                }
            }
            ReadAhead::Streaming(head)
        };
        let (reserved, read) = tokio::join!(self.index.begin_create(&new), read_ahead);
        let watermark = match reserved {
            Ok(watermark) => watermark,
            Err(IndexError::AlreadyExists { creating }) => {
                let reason = if creating {
                    FailureReason::BeingCreated
                } else {
                    FailureReason::AlreadyExists
                };
                return failed(
                    Some((&header, &id)),
                    reason,
                    "The instance already exists.".into(),
                );
            }
            Err(error) => {
                tracing::error!(%error, "could not reserve an instance");
                return processing_failure(&header, &id);
            }
        };
        let instance = VersionedInstance::new(id.clone(), watermark);
        let written = match read {
            ReadAhead::Whole(staged) => {
                let (file, metadata) = *staged;
                self.name_staged_blobs(&instance, &header, file, metadata, &tee)
                    .await
            }
            ReadAhead::Streaming(head) => {
                let rest = stream::iter(head.into_iter().map(Ok::<_, BodyError>))
                    .chain(body.map(|c| c.map_err(Into::into)));
                self.write_blobs(&instance, &header, rest, metadata, &mut tee)
                    .await
            }
            ReadAhead::Invalid => Err(crate::ServiceError::Blob(BlobError::Body(
                "the instance is not complete".into(),
            ))),
            ReadAhead::BodyFailed(error) => {
                tracing::info!(%error, %watermark, "the request body failed; rolling back");
                self.roll_back(&instance).await;
                let comment = format!("the request body failed: {error}");
                return failed(
                    Some((&header, &id)),
                    FailureReason::ProcessingFailure,
                    comment,
                );
            }
        };
        match (written, tee.invalid) {
            (Ok(()), _) => StoreOutcome::Stored {
                id,
                sop_class_uid: attributes.sop_class_uid,
                warnings,
                failed_attributes,
            },
            (Err(_), Some(invalid)) => {
                tracing::info!(%invalid, %watermark, "an instance failed validation while streaming; rolling back");
                self.roll_back(&instance).await;
                failed(
                    Some((&header, &id)),
                    FailureReason::ValidationFailure,
                    invalid.to_string(),
                )
            }
            (Err(error), None) => {
                tracing::error!(%error, %watermark, "store failed; rolling back");
                self.roll_back(&instance).await;
                processing_failure(&header, &id)
            }
        }
    }

    /// Names the blobs of a small instance written while it was reserved, then completes it.
    async fn name_staged_blobs(
        &self,
        instance: &VersionedInstance,
        header: &InstanceHeader,
        file: Result<StagedBody, BlobError>,
        metadata: Result<StagedBody, BlobError>,
        tee: &Tee,
    ) -> Result<(), crate::ServiceError> {
        // Side by side: each waits on its own fsyncs.
        let (file, metadata) = tokio::join!(
            self.blobs.put_staged_file(instance, file?),
            self.blobs.put_staged_metadata(instance, metadata?),
        );
        file?;
        metadata?;
        self.complete(instance, header, tee).await
    }

    /// Streams `body` to the file blob through `tee`; an instance the tee finds broken or cut
    /// short ends the stream with an error, so its blob is never created.
    async fn write_blobs<S>(
        &self,
        instance: &VersionedInstance,
        header: &InstanceHeader,
        body: S,
        metadata: Bytes,
        tee: &mut Tee,
    ) -> Result<(), crate::ServiceError>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send,
    {
        let mut body = pin!(body);
        let mut ended = false;
        let observed = stream::poll_fn(|cx| {
            if ended {
                return Poll::Ready(None);
            }
            let next = match body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            Poll::Ready(match next {
                Some(Ok(chunk)) => Some(tee.observe(&chunk).map(|()| chunk).map_err(invalid)),
                Some(Err(error)) => Some(Err(error)),
                None => {
                    ended = true;
                    tee.finish().err().map(|e| Err(invalid(e)))
                }
            })
        });
        // The metadata is written while the file streams: each durable write waits on its own
        // flushes, so side by side they cost one wait, not two. Whatever of them was written
        // when the other fails is removed by the caller's roll-back.
        let (file, metadata) = tokio::join!(
            self.blobs.put_file(instance, observed),
            self.blobs.put_metadata(instance, metadata),
        );
        file?;
        metadata?;
        self.complete(instance, header, tee).await
    }

    /// Writes what follows the instance's blobs (the frame ranges of encapsulated pixel data)
    /// and marks it `Created`.
    async fn complete(
        &self,
        instance: &VersionedInstance,
        header: &InstanceHeader,
        tee: &Tee,
    ) -> Result<(), crate::ServiceError> {
        // Encapsulated frames are known once the walk has seen every fragment.
        let ranges = match (header.pixel_data(), &tee.walker) {
            (Some(PixelData::Encapsulated { .. }), Some(walker)) => {
                let ranges = FrameRanges::encapsulated(walker, header.frame_count());
                if let Some(ranges) = &ranges {
                    self.blobs
                        .put_frame_ranges(instance.watermark(), ranges.to_json().into())
                        .await?;
                }
                ranges
            }
            _ => None,
        };
        self.index
            .end_create(
                instance.watermark(),
                tee.checksum.length(),
                &tee.checksum.value(),
                ranges.is_some(),
            )
            .await?;
        metrics::counter!(crate::metrics::INSTANCES_STORED).increment(1);
        metrics::counter!(crate::metrics::BYTES_STORED).increment(tee.checksum.length());
        Ok(())
    }

    /// Removes what a failed store wrote, and its reservation. If this fails too, the sweeper
    /// and the deleted-instance cleanup finish the job.
    async fn roll_back(&self, instance: &VersionedInstance) {
        if let Err(error) = self.blobs.delete_instance(instance).await {
            tracing::warn!(%error, "could not remove the blobs of a failed store now; the cleanup will");
        }
        if let Err(error) = self.index.abandon_create(instance.watermark()).await {
            tracing::warn!(%error, "could not abandon a failed reservation; the sweeper will");
        }
    }

    /// Sweeps one stale reservation (see [`crate::StaleStoreSweeper`]).
    pub(crate) async fn abandon(&self, watermark: Watermark) -> Result<(), crate::ServiceError> {
        Ok(self.index.abandon_create(watermark).await?)
    }
}

fn invalid(error: DicomError) -> BodyError {
    Box::new(error)
}

/// Checks what a store requires (orig E): v1 fails on any invalid searchable attribute; v2
/// removes such attributes from metadata and index and reports them. Required attributes
/// (the UIDs, PatientID) fail the instance in both, naming the attribute.
fn validate(
    header: &mut InstanceHeader,
    expected_study: Option<&Uid>,
    version: ApiVersion,
) -> Result<(InstanceIdentifier, SearchableAttributes, Vec<String>), Box<StoreOutcome>> {
    let sop_class = header.string(tessera_dicom_tags::SOP_CLASS_UID);
    let sop_uid = header.string(tessera_dicom_tags::SOP_INSTANCE_UID);
    let fail = |reason, comment: String, failed_attributes: Vec<String>| {
        Box::new(StoreOutcome::Failed {
            sop_class_uid: sop_class.clone(),
            sop_instance_uid: sop_uid.clone(),
            reason,
            comment,
            failed_attributes,
        })
    };
    let fail_on = |problem: ValidationError| {
        fail(
            FailureReason::ValidationFailure,
            problem.message.clone(),
            vec![problem.message],
        )
    };
    let id = header.identifier().map_err(fail_on)?;
    if expected_study
        .is_some_and(|expected| !expected.as_str().eq_ignore_ascii_case(id.study.as_str()))
    {
        return Err(fail(
            FailureReason::StudyUidMismatch,
            "The StudyInstanceUid in the payload does not match the specified StudyInstanceUid."
                .into(),
            Vec::new(),
        ));
    }
    if let Some(problem) = header.pixel_data_problem() {
        return Err(fail(FailureReason::ValidationFailure, problem, Vec::new()));
    }
    let patient_warning = header
        .check_patient_id(version == ApiVersion::V1)
        .map_err(fail_on)?;
    let problems = header.attribute_problems();
    let mut failed_attributes = match (version, problems.first()) {
        (ApiVersion::V1, Some(first)) => {
            return Err(fail(
                FailureReason::ValidationFailure,
                first.message.clone(),
                problems.into_iter().map(|p| p.message).collect(),
            ));
        }
        (ApiVersion::V2, Some(_)) => {
            let tags: Vec<_> = problems.iter().map(|p| p.tag).collect();
            header.remove_attributes(&tags);
            problems.into_iter().map(|p| p.message).collect()
        }
        (_, None) => Vec::new(),
    };
    failed_attributes.extend(patient_warning.map(|w| w.message));
    let attributes = header.searchable_attributes().map_err(fail_on)?;
    Ok((id, attributes, failed_attributes))
}

/// Our fault, told to the client without its details (they go to the log).
fn processing_failure(header: &InstanceHeader, id: &InstanceIdentifier) -> StoreOutcome {
    failed(
        Some((header, id)),
        FailureReason::ProcessingFailure,
        "Processing failure.".into(),
    )
}

fn failed(
    known: Option<(&InstanceHeader, &InstanceIdentifier)>,
    reason: FailureReason,
    comment: String,
) -> StoreOutcome {
    StoreOutcome::Failed {
        sop_class_uid: known.and_then(|(h, _)| h.string(tessera_dicom_tags::SOP_CLASS_UID)),
        sop_instance_uid: known.map(|(_, id)| id.sop.to_string()),
        reason,
        comment,
        failed_attributes: Vec::new(),
    }
}

/// The two tags the outcome needs, without making callers depend on the dictionary crate.
mod tessera_dicom_tags {
    pub use tessera_dicom::tags::{SOP_CLASS_UID, SOP_INSTANCE_UID};
}
