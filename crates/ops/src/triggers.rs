//! Start-up triggers (contract §6, orig B.4, with the fixes of orig G): which operations a
//! process starts or resumes, and supervision until each is done.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_core::FormatType;
use tessera_index::OperationStatus;
use tokio::task::JoinHandle;

use crate::{OperationContext, OperationKind, RunOutcome};

/// The `BlobMigration` settings the triggers read.
#[derive(Clone, Debug)]
pub struct MigrationSettings {
    /// Current format.
    pub format: FormatType,
    /// `StartCopy`.
    pub start_copy: bool,
    /// `StartDelete`.
    pub start_delete: bool,
    /// `CopyOperationId` (32 hex digits).
    pub copy_id: String,
    /// `DeleteOperationId`.
    pub delete_id: String,
    /// `CleanupDeletedOperationId`.
    pub cleanup_id: String,
    /// `CleanupFilterTimeStamp`.
    pub cleanup_since: Option<DateTime<Utc>>,
}

/// Starts the operations the configuration asks for, each supervised by a task that runs it
/// (or waits for another process's lease to end and takes over) until it is done or the
/// context's `stop` is cancelled.
pub fn start_configured_operations(
    context: OperationContext,
    settings: MigrationSettings,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if settings.format != FormatType::New && settings.start_copy {
        tasks.push(tokio::spawn(supervise(
            context.clone(),
            settings.copy_id.clone(),
            OperationKind::Copy,
            None,
        )));
    }
    if settings.format == FormatType::New && settings.start_delete {
        let context = context.clone();
        let (copy_id, delete_id) = (settings.copy_id.clone(), settings.delete_id.clone());
        tasks.push(tokio::spawn(async move {
            match context.index.operation(&copy_id).await {
                Ok(Some(copy)) if copy.status == OperationStatus::Succeeded => {
                    supervise(context, delete_id, OperationKind::MigrationDeletion, None).await;
                }
                Ok(copy) => {
                    let status = copy.map(|c| c.status.as_str()).unwrap_or("absent");
                    tracing::warn!(
                        copy_operation = %copy_id,
                        copy_status = status,
                        "Delete operation not started: the copy operation has not completed successfully (run it with FormatType Dual and StartCopy first)."
                    );
                }
                Err(error) => tracing::error!(%error, "cannot read the copy operation; delete operation not started"),
            }
        }));
    } else if settings.start_delete {
        tracing::warn!(format = %settings.format, "StartDelete is set but FormatType is not New; delete operation not started.");
    }
    if let Some(since) = settings.cleanup_since {
        tasks.push(tokio::spawn(supervise(
            context,
            settings.cleanup_id,
            OperationKind::CleanupDeleted,
            Some(since),
        )));
    }
    tasks
}

async fn supervise(
    context: OperationContext,
    id: String,
    kind: OperationKind,
    since: Option<DateTime<Utc>>,
) {
    let label = kind.name();
    loop {
        match context.run(&id, kind, since).await {
            Ok(RunOutcome::Finished(status)) => {
                tracing::info!(operation = label, %id, status = status.as_str(), "operation finished");
                return;
            }
            Ok(RunOutcome::AlreadySucceeded) => {
                tracing::info!(operation = label, %id, "Operation with ID '{id}' has already completed successfully.");
                return;
            }
            Ok(RunOutcome::Interrupted) => return,
            Ok(RunOutcome::HeldElsewhere) => {
                tracing::info!(operation = label, %id, "operation is running in another process; taking over if its lease expires");
            }
            Err(error) => {
                tracing::warn!(operation = label, %id, %error, "operation stopped; retrying")
            }
        }
        tokio::select! {
            () = context.stop.cancelled() => return,
            () = tokio::time::sleep(context.lease / 2 + Duration::from_millis(100)) => {}
        }
    }
}
