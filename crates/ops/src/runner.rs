//! Running one operation: acquire, resume from the checkpoint, walk in rounds, checkpoint after
//! each round, finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_blob::InstanceBlobStore;
use tessera_index::{
    Acquisition, InstanceIndex, OperationRecord, OperationResults, OperationStatus, StoredInstance,
};
use tokio_util::sync::CancellationToken;

use crate::OperationError;
use crate::migration::{
    DeleteOutcome, RoundCopies, copy_instance, delete_old, delete_old_of_deleted,
};

/// The three migration operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    /// Old → New copy.
    Copy,
    /// Deletion of verified Old blobs.
    MigrationDeletion,
    /// Deletion of the Old blobs of deleted instances.
    CleanupDeleted,
}

impl OperationKind {
    /// The operation type name of the operations API (orig C).
    pub fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::MigrationDeletion => "migrationDeletion",
            Self::CleanupDeleted => "cleanupDeleted",
        }
    }
}

/// Everything an operation needs to run.
#[derive(Clone)]
pub struct OperationContext {
    /// The index (operations, instances, change feed).
    pub index: InstanceIndex,
    /// The blob store (both layouts are addressed directly).
    pub blobs: Arc<InstanceBlobStore>,
    /// This process, as a lease owner.
    pub owner: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Instances per round (`Size × MaxParallelCount`) of each operation.
    pub rounds: RoundSizes,
    /// Instances worked on at once (`MaxParallelThreads`).
    pub parallelism: usize,
    /// Cancelled at shutdown: a run starts no new instance, keeps its last checkpoint (the
    /// round in progress is redone by whoever resumes) and releases its lease.
    pub stop: CancellationToken,
}

/// Instances (or change-feed rows) per round, by operation (`DicomFunctions:*:Batching`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundSizes {
    /// Copy.
    pub copy: u32,
    /// Delete-old.
    pub deletion: u32,
    /// Cleanup-deleted.
    pub cleanup: u32,
}

impl RoundSizes {
    fn of(&self, kind: OperationKind) -> u32 {
        match kind {
            OperationKind::Copy => self.copy,
            OperationKind::MigrationDeletion => self.deletion,
            OperationKind::CleanupDeleted => self.cleanup,
        }
        .max(1)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// It ran to the end with this status.
    Finished(OperationStatus),
    /// It had already succeeded.
    AlreadySucceeded,
    /// Another process holds it.
    HeldElsewhere,
    /// Stopped by [`OperationContext::stop`]; its lease was released.
    Interrupted,
}

/// Where a walk stands. Stored as the operation's checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Checkpoint {
    /// `walk`, `catchUp`, then `retry` (only recorded failures are visited).
    phase: Phase,
    /// When the operation first started.
    started_at: Option<DateTime<Utc>>,
    /// The highest watermark when the walk started.
    upper: u64,
    /// The walk continues below this watermark (copy, delete-old).
    below: Option<u64>,
    /// The catch-up (and retry) pass continues above this watermark.
    after: u64,
    /// Cleanup-deleted continues after this change-feed sequence.
    after_sequence: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Phase {
    #[default]
    Walk,
    CatchUp,
    Retry,
}

/// One instance's work and its effect on the counts.
type Step = Result<fn(&mut OperationResults), String>;

impl OperationContext {
    /// Takes operation `id` of `kind` and runs it to the end (or until its lease is lost).
    /// `since` is the cleanup-deleted filter timestamp.
    pub async fn run(
        &self,
        id: &str,
        kind: OperationKind,
        since: Option<DateTime<Utc>>,
    ) -> Result<RunOutcome, OperationError> {
        let fresh = Checkpoint {
            started_at: Some(Utc::now()),
            ..Checkpoint::default()
        };
        let fresh_json = serde_json::to_string(&fresh).unwrap_or_default();
        let record = match self
            .index
            .acquire_operation(
                id,
                kind.name(),
                &self.owner,
                self.lease,
                &fresh_json,
                &OperationResults::default().to_json(),
            )
            .await?
        {
            Acquisition::Acquired(record) => record,
            Acquisition::AlreadySucceeded(_) => return Ok(RunOutcome::AlreadySucceeded),
            Acquisition::HeldElsewhere(_) => return Ok(RunOutcome::HeldElsewhere),
        };
        tracing::info!(operation = kind.name(), %id, "running operation (resuming from its checkpoint if it has one)");
        let lost = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn(renew(
            self.index.clone(),
            id.to_owned(),
            self.owner.clone(),
            self.lease,
            lost.clone(),
        ));
        let result = self.drive(&record, kind, since, &lost).await;
        renewal.abort();
        match result {
            Err(OperationError::Interrupted) => {
                if self.index.release_operation(id, &self.owner).await? {
                    tracing::info!(operation = kind.name(), %id, "operation interrupted by shutdown; its lease is released and its last checkpoint kept");
                }
                Ok(RunOutcome::Interrupted)
            }
            other => other,
        }
    }

    async fn drive(
        &self,
        record: &OperationRecord,
        kind: OperationKind,
        since: Option<DateTime<Utc>>,
        lost: &AtomicBool,
    ) -> Result<RunOutcome, OperationError> {
        let id = record.id.as_str();
        let mut checkpoint: Checkpoint =
            serde_json::from_str(&record.checkpoint).unwrap_or_default();
        let mut results = OperationResults::parse(&record.results);
        if checkpoint.started_at.is_none() {
            checkpoint.started_at = Some(Utc::now());
        }
        if kind == OperationKind::CleanupDeleted {
            // Its failures are revisited from the checkpoint, which stays before the first one.
            self.index.clear_operation_failures(id).await?;
        }
        if checkpoint.phase == Phase::Retry && checkpoint.after == u64::MAX {
            // The walk ended in an earlier run: a resume retries only what failed.
            checkpoint.after = 0;
            results.failed = 0;
            results.errors.clear();
        }
        if results.total == 0 && checkpoint.phase == Phase::Walk && checkpoint.below.is_none() {
            checkpoint.upper = self.index.max_created_watermark().await?.unwrap_or(0);
            results.total = match kind {
                OperationKind::CleanupDeleted => match since {
                    Some(since) => self.index.count_deletes_since(since).await?,
                    None => 0,
                },
                _ => self.index.count_created().await?,
            };
            self.save(id, &checkpoint, &results, lost).await?;
        }
        loop {
            if self.stop.is_cancelled() {
                return Err(OperationError::Interrupted);
            }
            let finished = match (kind, checkpoint.phase) {
                (OperationKind::CleanupDeleted, _) => {
                    self.cleanup_round(id, &mut checkpoint, &mut results, since)
                        .await?
                }
                (_, Phase::Walk) => {
                    let batch = self
                        .index
                        .instances_below(
                            checkpoint.below.or(Some(checkpoint.upper + 1)),
                            self.rounds.of(kind),
                        )
                        .await?;
                    match batch.iter().map(|i| i.instance.watermark().get()).min() {
                        None => {
                            checkpoint.phase = if kind == OperationKind::Copy {
                                Phase::CatchUp
                            } else {
                                Phase::Retry
                            };
                            checkpoint.after = if kind == OperationKind::Copy {
                                0
                            } else {
                                u64::MAX
                            };
                        }
                        Some(lowest) => {
                            self.process(id, kind, batch, &mut results).await?;
                            checkpoint.below = Some(lowest);
                        }
                    }
                    false
                }
                (_, Phase::CatchUp) => {
                    let started = checkpoint.started_at.unwrap_or_else(Utc::now);
                    let batch = self
                        .index
                        .instances_since(
                            checkpoint.after,
                            checkpoint.upper,
                            started,
                            self.rounds.of(kind),
                        )
                        .await?;
                    match batch.iter().map(|i| i.instance.watermark().get()).max() {
                        None => {
                            checkpoint.phase = Phase::Retry;
                            checkpoint.after = u64::MAX;
                        }
                        Some(highest) => {
                            results.total += batch.len() as u64;
                            self.process(id, kind, batch, &mut results).await?;
                            checkpoint.after = highest;
                        }
                    }
                    false
                }
                (_, Phase::Retry) => {
                    self.retry_round(id, kind, &mut checkpoint, &mut results)
                        .await?
                }
            };
            results.total = results.total.max(results.processed);
            if finished {
                break;
            }
            self.save(id, &checkpoint, &results, lost).await?;
        }
        let failures = self.index.operation_failures(id, 0, 1).await?;
        let status = if failures.is_empty() {
            OperationStatus::Succeeded
        } else {
            OperationStatus::Failed
        };
        let checkpoint_json = serde_json::to_string(&checkpoint).unwrap_or_default();
        if !self
            .index
            .finish_operation(
                id,
                &self.owner,
                status,
                &checkpoint_json,
                &results.to_json(),
            )
            .await?
        {
            return Err(OperationError::LeaseLost);
        }
        match (kind, status) {
            (OperationKind::Copy, OperationStatus::Succeeded) => {
                tracing::info!(%id, "Completed copying files.")
            }
            (OperationKind::MigrationDeletion, OperationStatus::Succeeded) => {
                tracing::info!(%id, "Completed deleting files.")
            }
            (OperationKind::CleanupDeleted, OperationStatus::Succeeded) => {
                tracing::info!(%id, "Completed cleaning up deleted files.");
                tracing::info!(%id, operation = "cleanupDeleted", "Completed deleting files.");
            }
            (_, status) => {
                tracing::warn!(%id, operation = kind.name(), status = status.as_str(), failed = results.failed, "operation finished with failures; a restart retries them")
            }
        }
        Ok(RunOutcome::Finished(status))
    }

    async fn save(
        &self,
        id: &str,
        checkpoint: &Checkpoint,
        results: &OperationResults,
        lost: &AtomicBool,
    ) -> Result<(), OperationError> {
        let json = serde_json::to_string(checkpoint).unwrap_or_default();
        if lost.load(Ordering::Relaxed)
            || !self
                .index
                .checkpoint_operation(id, &self.owner, self.lease, &json, &results.to_json())
                .await?
        {
            return Err(OperationError::LeaseLost);
        }
        Ok(())
    }

    /// Works on a batch of instances, `parallelism` at a time, and counts the outcomes.
    /// The round's copies are made durable before any outcome is recorded (failures cleared or
    /// recorded in one transaction), and so before the caller checkpoints the round.
    /// [`OperationError::Interrupted`] when `stop` cut the batch short (the instances in flight
    /// are finished; the round must not be checkpointed).
    async fn process(
        &self,
        id: &str,
        kind: OperationKind,
        batch: Vec<StoredInstance>,
        results: &mut OperationResults,
    ) -> Result<(), OperationError> {
        let size = batch.len();
        let copies = RoundCopies::new(&self.blobs);
        let outcomes: Vec<(u64, Step)> = futures::stream::iter(batch)
            .take_while(|_| futures::future::ready(!self.stop.is_cancelled()))
            .map(|stored| {
                let copies = &copies;
                async move {
                    (
                        stored.instance.watermark().get(),
                        self.step(kind, copies, &stored).await,
                    )
                }
            })
            .buffer_unordered(self.parallelism.max(1))
            .collect()
            .await;
        copies.sync().await?;
        let complete = outcomes.len() == size;
        let mut succeeded = Vec::with_capacity(outcomes.len());
        let mut failed = Vec::new();
        for (watermark, outcome) in outcomes {
            results.processed += 1;
            match outcome {
                Ok(count) => {
                    count(results);
                    succeeded.push(watermark);
                }
                Err(message) => {
                    tracing::warn!(%id, watermark, %message, "instance failed; it is skipped and retried when the operation resumes");
                    results.failed += 1;
                    results.push_error(format!("watermark {watermark}: {message}"));
                    failed.push((watermark, message));
                }
            }
        }
        self.index
            .settle_operation_failures(id, &succeeded, &failed)
            .await?;
        if complete {
            Ok(())
        } else {
            Err(OperationError::Interrupted)
        }
    }

    async fn step(
        &self,
        kind: OperationKind,
        copies: &RoundCopies,
        stored: &StoredInstance,
    ) -> Step {
        match kind {
            OperationKind::Copy => {
                let outcome = copy_instance(&self.index, &self.blobs, copies, stored).await?;
                Ok(match (outcome.copied, outcome.already_present) {
                    (2, _) => |r| {
                        r.copied += 2;
                        r.verified += 1;
                    },
                    (1, _) => |r| {
                        r.copied += 1;
                        r.already_present += 1;
                        r.verified += 1;
                    },
                    _ => |r| {
                        r.already_present += 2;
                        r.verified += 1;
                    },
                })
            }
            OperationKind::MigrationDeletion => {
                match delete_old(&self.index, &self.blobs, stored).await? {
                    DeleteOutcome::Deleted => Ok(|r| {
                        r.verified += 1;
                        r.deleted += 1;
                    }),
                    DeleteOutcome::NothingToDelete => Ok(|r| r.skipped += 1),
                }
            }
            OperationKind::CleanupDeleted => Err("not an instance operation".into()),
        }
    }

    /// Retries recorded failures, a round at a time; true when none is left to visit.
    async fn retry_round(
        &self,
        id: &str,
        kind: OperationKind,
        checkpoint: &mut Checkpoint,
        results: &mut OperationResults,
    ) -> Result<bool, OperationError> {
        if checkpoint.after == u64::MAX {
            return Ok(true);
        }
        let failures = self
            .index
            .operation_failures(id, checkpoint.after, self.rounds.of(kind))
            .await?;
        let Some(&(highest, _)) = failures.last() else {
            checkpoint.after = u64::MAX;
            return Ok(true);
        };
        let mut batch = Vec::new();
        for (watermark, _) in failures {
            match self.index.instance_by_watermark(watermark).await? {
                Some(stored) => batch.push(stored),
                // Deleted since: nothing left to migrate.
                None => self.index.clear_operation_failure(id, watermark).await?,
            }
        }
        self.process(id, kind, batch, results).await?;
        checkpoint.after = highest;
        Ok(false)
    }

    /// One round of cleanup-deleted; true when the change feed has no more delete rows, or when
    /// a row failed (the checkpoint then stays before it, so a restart resumes there).
    async fn cleanup_round(
        &self,
        id: &str,
        checkpoint: &mut Checkpoint,
        results: &mut OperationResults,
        since: Option<DateTime<Utc>>,
    ) -> Result<bool, OperationError> {
        let Some(since) = since else { return Ok(true) };
        let entries = self
            .index
            .deletes_since(
                since,
                checkpoint.after_sequence,
                self.rounds.of(OperationKind::CleanupDeleted),
            )
            .await?;
        let Some(last) = entries.last().map(|e| e.sequence) else {
            return Ok(true);
        };
        let size = entries.len();
        let outcomes: Vec<(i64, u64, Result<(), String>)> = futures::stream::iter(entries)
            .take_while(|_| futures::future::ready(!self.stop.is_cancelled()))
            .map(|entry| async move {
                let outcome = delete_old_of_deleted(&self.blobs, &entry.instance).await;
                (entry.sequence, entry.instance.watermark().get(), outcome)
            })
            .buffer_unordered(self.parallelism.max(1))
            .collect()
            .await;
        if outcomes.len() < size {
            return Err(OperationError::Interrupted);
        }
        let mut first_failure = None;
        for (sequence, watermark, outcome) in outcomes {
            results.processed += 1;
            match outcome {
                Ok(()) => results.deleted += 1,
                Err(message) => {
                    results.failed += 1;
                    results.push_error(format!("watermark {watermark}: {message}"));
                    self.index
                        .record_operation_failure(id, watermark, &message)
                        .await?;
                    first_failure = Some(first_failure.map_or(sequence, |s: i64| s.min(sequence)));
                }
            }
        }
        match first_failure {
            Some(sequence) => {
                checkpoint.after_sequence = sequence - 1;
                Ok(true)
            }
            None => {
                checkpoint.after_sequence = last;
                Ok(false)
            }
        }
    }
}

/// Renews the lease every third of its length; flags `lost` when another process took over.
async fn renew(
    index: InstanceIndex,
    id: String,
    owner: String,
    lease: Duration,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match index.renew_operation_lease(&id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(error) => tracing::warn!(%error, "could not renew an operation lease"),
        }
    }
}
