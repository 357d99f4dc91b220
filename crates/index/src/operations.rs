//! Durable operations: status, checkpoint, results and a lease, kept in the index.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{IndexError, InstanceIndex, Result, from_micros, micros, micros_after};

/// Where an operation stands (the original's runtime statuses, orig C).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    /// Created, not yet picked up.
    NotStarted,
    /// A process holds it (or held it until its lease expired).
    Running,
    /// Finished with nothing left to do.
    Succeeded,
    /// Finished with failures; resuming retries them.
    Failed,
    /// Stopped by an operator.
    Canceled,
}

impl OperationStatus {
    /// The stored (and wire) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "notStarted",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "notStarted" => Self::NotStarted,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            other => return Err(IndexError::Corrupt(format!("operation status '{other}'"))),
        })
    }
}

/// What an operation has done so far, kept with it (counts of instances, and up to
/// [`OperationResults::MAX_ERRORS`] error messages).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OperationResults {
    /// Instances (or change-feed rows) the operation expects to visit; grows as new ones appear.
    pub total: u64,
    /// Visited.
    pub processed: u64,
    /// Blobs copied (copy).
    pub copied: u64,
    /// Blobs that were already there and were checked (copy).
    pub already_present: u64,
    /// Instances whose New blobs matched the recorded length and checksum.
    pub verified: u64,
    /// Instances whose Old blobs were deleted.
    pub deleted: u64,
    /// Instances with nothing to do.
    pub skipped: u64,
    /// Instances that failed (and are retried when the operation resumes).
    pub failed: u64,
    /// The first errors, for operators.
    pub errors: Vec<String>,
}

impl OperationResults {
    /// How many error messages are kept.
    pub const MAX_ERRORS: usize = 100;

    /// Parses stored results; unreadable ones count as empty.
    pub fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Adds an error message, keeping at most [`Self::MAX_ERRORS`].
    pub fn push_error(&mut self, message: String) {
        if self.errors.len() < Self::MAX_ERRORS {
            self.errors.push(message);
        }
    }

    /// Progress from counts (not from the watermark number space, orig G.12), below 100 until
    /// the operation has succeeded.
    pub fn percent_complete(&self, succeeded: bool) -> u64 {
        if succeeded {
            100
        } else {
            (self.processed * 100)
                .checked_div(self.total)
                .map_or(0, |p| p.min(99))
        }
    }
}

/// One operation as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperationRecord {
    /// The operation id (32 lowercase hex digits).
    pub id: String,
    /// `copy`, `migrationDeletion` or `cleanupDeleted`.
    pub kind: String,
    /// Status.
    pub status: OperationStatus,
    /// Where to resume (JSON owned by the operation).
    pub checkpoint: String,
    /// Counters and errors (JSON owned by the operation).
    pub results: String,
    /// When it was first created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The process holding it, if any.
    pub lease_owner: Option<String>,
    /// Until when that process holds it.
    pub lease_expires: Option<DateTime<Utc>>,
}

/// The outcome of trying to take an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquisition {
    /// This process now runs it (new, or resumed from its checkpoint).
    Acquired(OperationRecord),
    /// It already succeeded; nothing to do.
    AlreadySucceeded(OperationRecord),
    /// Another process holds a live lease on it.
    HeldElsewhere(OperationRecord),
}

const SELECT: &str = "SELECT id, kind, status, checkpoint, results, created_at, updated_at, lease_owner, lease_expires FROM operations";

/// `SELECT`.
#[derive(Debug, sqlx::FromRow)]
struct OperationRow {
    id: String,
    kind: String,
    status: String,
    checkpoint: String,
    results: String,
    created_at: i64,
    updated_at: i64,
    lease_owner: Option<String>,
    lease_expires: Option<i64>,
}

impl OperationRow {
    fn into_record(self) -> Result<OperationRecord> {
        Ok(OperationRecord {
            id: self.id,
            kind: self.kind,
            status: OperationStatus::parse(&self.status)?,
            checkpoint: self.checkpoint,
            results: self.results,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
            lease_owner: self.lease_owner,
            lease_expires: self.lease_expires.map(from_micros).transpose()?,
        })
    }
}

fn until(lease: Duration) -> i64 {
    micros_after(lease)
}

impl InstanceIndex {
    /// The operation with this id, if it exists.
    pub async fn operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        let row: Option<OperationRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
                .bind(id.to_owned())
                .fetch_optional(&self.pool)
                .await?;
        row.map(OperationRow::into_record).transpose()
    }

    /// Takes operation `id` for `owner` for `lease`: creates it (with `checkpoint` and
    /// `results`) if absent; resumes it if failed, canceled, not started, or running under an
    /// expired lease (or one `owner` already holds); leaves it if it succeeded or another
    /// process holds a live lease.
    pub async fn acquire_operation(
        &self,
        id: &str,
        kind: &str,
        owner: &str,
        lease: Duration,
        checkpoint: &str,
        results: &str,
    ) -> Result<Acquisition> {
        let now = micros(Utc::now());
        let mut tx = self.begin().await?;
        // Created when absent (a write first, so SQLite takes its write lock before the read);
        // when present, locked before it is read, so two processes never both take it.
        let created: Option<String> = sqlx::query_scalar(
            "INSERT INTO operations (id, kind, status, checkpoint, results, created_at, updated_at, lease_owner, lease_expires)
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8)
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(id.to_owned())
        .bind(kind.to_owned())
        .bind(OperationStatus::Running.as_str())
        .bind(checkpoint.to_owned())
        .bind(results.to_owned())
        .bind(now)
        .bind(owner.to_owned())
        .bind(until(lease))
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = if created.is_some() {
            None
        } else {
            sqlx::query("UPDATE operations SET id = id WHERE id = $1")
                .bind(id.to_owned())
                .execute(&mut *tx)
                .await?;
            let existing: OperationRow =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT} WHERE id = $1")))
                    .bind(id.to_owned())
                    .fetch_one(&mut *tx)
                    .await?;
            match existing.into_record()? {
                record if record.status == OperationStatus::Succeeded => {
                    Some(Acquisition::AlreadySucceeded(record))
                }
                record
                    if record.status == OperationStatus::Running
                        && record.lease_owner.as_deref() != Some(owner)
                        && record.lease_expires.is_some_and(|t| micros(t) > now) =>
                {
                    Some(Acquisition::HeldElsewhere(record))
                }
                _ => {
                    sqlx::query(
                        "UPDATE operations SET status = $1, lease_owner = $2, lease_expires = $3, updated_at = $4 WHERE id = $5",
                    )
                    .bind(OperationStatus::Running.as_str())
                    .bind(owner.to_owned())
                    .bind(until(lease))
                    .bind(now)
                    .bind(id.to_owned())
                    .execute(&mut *tx)
                    .await?;
                    None
                }
            }
        };
        tx.commit().await?;
        match outcome {
            Some(outcome) => Ok(outcome),
            None => {
                let record = self.operation(id).await?.ok_or(IndexError::NotFound)?;
                Ok(Acquisition::Acquired(record))
            }
        }
    }

    /// Saves progress and extends the lease. Returns false if `owner` no longer holds the
    /// operation (its lease expired and another process took it): the caller must stop.
    pub async fn checkpoint_operation(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        checkpoint: &str,
        results: &str,
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE operations SET checkpoint = $1, results = $2, updated_at = $3, lease_expires = $4
             WHERE id = $5 AND lease_owner = $6 AND status = $7",
        )
        .bind(checkpoint.to_owned())
        .bind(results.to_owned())
        .bind(micros(Utc::now()))
        .bind(until(lease))
        .bind(id.to_owned())
        .bind(owner.to_owned())
        .bind(OperationStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Ends the operation with `status` and releases the lease.
    pub async fn finish_operation(
        &self,
        id: &str,
        owner: &str,
        status: OperationStatus,
        checkpoint: &str,
        results: &str,
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE operations SET status = $1, checkpoint = $2, results = $3, updated_at = $4, lease_owner = NULL,
                 lease_expires = NULL WHERE id = $5 AND lease_owner = $6",
        )
        .bind(status.as_str())
        .bind(checkpoint.to_owned())
        .bind(results.to_owned())
        .bind(micros(Utc::now()))
        .bind(id.to_owned())
        .bind(owner.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Gives up the lease of a running operation without finishing it (a graceful shutdown):
    /// its last checkpoint stays, and any process may resume it at once. False if `owner` no
    /// longer held it.
    pub async fn release_operation(&self, id: &str, owner: &str) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE operations SET lease_owner = NULL, lease_expires = NULL, updated_at = $1
             WHERE id = $2 AND lease_owner = $3 AND status = $4",
        )
        .bind(micros(Utc::now()))
        .bind(id.to_owned())
        .bind(owner.to_owned())
        .bind(OperationStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Extends the lease of a running operation; false if `owner` no longer holds it.
    pub async fn renew_operation_lease(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE operations SET lease_expires = $1 WHERE id = $2 AND lease_owner = $3 AND status = $4",
        )
        .bind(until(lease))
        .bind(id.to_owned())
        .bind(owner.to_owned())
        .bind(OperationStatus::Running.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Records that `watermark` failed in operation `id` (replacing an earlier error).
    pub async fn record_operation_failure(
        &self,
        id: &str,
        watermark: u64,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO operation_failures (operation_id, watermark, error) VALUES ($1, $2, $3)
             ON CONFLICT (operation_id, watermark) DO UPDATE SET error = excluded.error",
        )
        .bind(id.to_owned())
        .bind(crate::rows::to_db(watermark)?)
        .bind(error.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a round's outcomes in one transaction: forgets the failures of the instances in
    /// `succeeded` and records (or replaces) those in `failed`. One commit per round rather
    /// than one per instance.
    pub async fn settle_operation_failures(
        &self,
        id: &str,
        succeeded: &[u64],
        failed: &[(u64, String)],
    ) -> Result<()> {
        /// Watermarks per DELETE, well under every engine's limit on bound values.
        const CHUNK: usize = 500;
        if succeeded.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for chunk in succeeded.chunks(CHUNK) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "DELETE FROM operation_failures WHERE operation_id = $1 AND watermark IN ({})",
                placeholders.join(", ")
            );
            // Safe: numbered placeholders only; values are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.to_owned());
            for &watermark in chunk {
                query = query.bind(crate::rows::to_db(watermark)?);
            }
            query.execute(&mut *tx).await?;
        }
        for (watermark, error) in failed {
            sqlx::query(
                "INSERT INTO operation_failures (operation_id, watermark, error) VALUES ($1, $2, $3)
                 ON CONFLICT (operation_id, watermark) DO UPDATE SET error = excluded.error",
            )
            .bind(id.to_owned())
            .bind(crate::rows::to_db(*watermark)?)
            .bind(error.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a failure (the instance succeeded on a retry, or no longer exists).
    pub async fn clear_operation_failure(&self, id: &str, watermark: u64) -> Result<()> {
        sqlx::query("DELETE FROM operation_failures WHERE operation_id = $1 AND watermark = $2")
            .bind(id.to_owned())
            .bind(crate::rows::to_db(watermark)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes an operation and its failures (a finished adoption is started anew).
    pub async fn delete_operation(&self, id: &str) -> Result<()> {
        self.clear_operation_failures(id).await?;
        sqlx::query("DELETE FROM operations WHERE id = $1")
            .bind(id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets every failure of operation `id`.
    pub async fn clear_operation_failures(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM operation_failures WHERE operation_id = $1")
            .bind(id.to_owned())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` recorded failures of operation `id` with a watermark above `after`.
    pub async fn operation_failures(
        &self,
        id: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, String)>> {
        #[derive(sqlx::FromRow)]
        struct FailureRow {
            watermark: i64,
            error: String,
        }
        let rows: Vec<FailureRow> = sqlx::query_as(
            "SELECT watermark, error FROM operation_failures WHERE operation_id = $1 AND watermark > $2
             ORDER BY watermark LIMIT $3",
        )
        .bind(id.to_owned())
        .bind(crate::rows::to_db(after)?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    crate::rows::unsigned(row.watermark, "watermark")?,
                    row.error,
                ))
            })
            .collect()
    }
}
