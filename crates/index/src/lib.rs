//! Tessera's index: which instances exist, under which watermark, in which state; the change
//! feed; and the queue of deleted instances whose blobs are still to be removed.
//!
//! One SQL schema and one set of queries run on SQLite (the embedded default) and PostgreSQL,
//! through `sqlx`'s `Any` driver. This crate is the only one with SQL.
//!
//! Guarantees callers rely on:
//! - a watermark is handed out once, ever ([`InstanceIndex::begin_create`]);
//! - an instance is visible (`Created`) only after [`InstanceIndex::end_create`], which also
//!   appends its change-feed row in the same transaction;
//! - [`InstanceIndex::delete`] removes rows and appends change-feed rows in one transaction and
//!   queues the blobs for removal; no blob is touched by the index.

mod adoption;
mod migration;
mod model;
mod operations;
mod processes;
mod search;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tessera_core::{
    InstanceIdentifier, Uid, VersionedInstance, Watermark, person_name_search_forms,
};

pub use adoption::{Adoption, FoundInstance};
pub use model::{
    ChangeAction, ChangeFeedEntry, ChangeState, DeletedInstance, NewInstance, RetrieveScope,
    StoredInstance,
};
pub use operations::{Acquisition, OperationRecord, OperationResults, OperationStatus};
pub use processes::{GoneProbe, ProcessId, ProcessInfo, RegisteredProcess};
pub use search::QidoRow;

/// What can go wrong in the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// An instance with the same UIDs exists (45070), or is being created (45071).
    #[error("the instance already exists{}", if *.creating { " and is being created" } else { "" })]
    AlreadyExists {
        /// Whether the existing row is still `Creating`.
        creating: bool,
    },
    /// Nothing matched (a delete or a completion of a row that is gone).
    #[error("no such instance")]
    NotFound,
    /// The index URL cannot be opened or migrated.
    #[error("cannot open index {url}: {reason}")]
    Open {
        /// The URL, password masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stored value that does not fit the domain (a corrupt row).
    #[error("corrupt index row: {0}")]
    Corrupt(String),
    /// Any database failure.
    #[error("index database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl IndexError {
    /// Whether the database is unreachable or saturated (a client may retry later), rather
    /// than the request or the index being at fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Open { .. } => true,
            Self::Database(error) => {
                matches!(
                    error,
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || error
                    .as_database_error()
                    .and_then(|e| e.code())
                    // SQLITE_BUSY, SQLITE_LOCKED; PostgreSQL's class 53 (insufficient resources)
                    // and 57P03 (cannot connect now).
                    .is_some_and(|code| {
                        code == "5" || code == "6" || code.starts_with("53") || code == "57P03"
                    })
            }
            _ => false,
        }
    }
}

pub(crate) type Result<T, E = IndexError> = std::result::Result<T, E>;

pub(crate) const CREATING: i16 = 0;
pub(crate) const CREATED: i16 = 1;

/// The index over a SQL database.
#[derive(Clone, Debug)]
pub struct InstanceIndex {
    pub(crate) pool: AnyPool,
    /// The process recorded as the owner of reservations made through this handle.
    pub(crate) owner: Option<ProcessId>,
    /// Tells whether a registered owner is gone (see [`GoneProbe`]).
    pub(crate) gone: Option<GoneProbe>,
}

/// The connections of an index's pool at one moment, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// Connections open (idle or in use).
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

pub(crate) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

pub(crate) fn from_micros(value: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(value).unwrap_or_default()
}

impl InstanceIndex {
    /// How many connections the pool holds and how many of them are idle.
    pub fn pool_usage(&self) -> PoolUsage {
        PoolUsage {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`, `sqlite::memory:`,
    /// `postgres://…`) and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let open_error = |reason: String| IndexError::Open {
            url: mask(url),
            reason,
        };
        let is_sqlite = url.starts_with("sqlite:");
        let url = if is_sqlite {
            sqlite_url(url).map_err(&open_error)?
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 16 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *connection)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| open_error(e.to_string()))?;
        if is_sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .map_err(|e| open_error(e.to_string()))?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| open_error(e.to_string()))?;
        } else {
            return Err(open_error("PostgreSQL support is not built yet".into()));
        }
        Ok(Self {
            pool,
            owner: None,
            gone: None,
        })
    }

    /// Reserves a watermark and a `Creating` row for an instance about to be stored, owned by
    /// this handle's process ([`Self::with_owner`]), and upserts its study and series (latest
    /// wins). Fails with [`IndexError::AlreadyExists`] if the UIDs are taken, except by a dead
    /// reservation (its owner unregistered or its lease expired), which is abandoned (blobs
    /// queued for removal) and replaced in the same transaction.
    pub async fn begin_create(&self, instance: &NewInstance) -> Result<Watermark> {
        let now = micros(Utc::now());
        let mut tx = self.pool.begin().await?;
        // The write comes first so that SQLite takes its write lock at once (no upgrade deadlock).
        let next: i64 = sqlx::query(
            "UPDATE watermark_sequence SET next_value = next_value + 1 WHERE id = 1 RETURNING next_value - 1",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let id = &instance.id;
        let existing = sqlx::query(
            "SELECT i.status, i.watermark, i.owner_id, p.owner_id, p.host, p.local_key, p.pid, p.start_ticks,
                 p.started_at, p.lease_expires FROM instances i LEFT JOIN processes p ON p.owner_id = i.owner_id
             WHERE i.study_uid = $1 AND i.series_uid = $2 AND i.sop_uid = $3",
        )
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(id.sop.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let status: i16 = row.try_get(0)?;
            let owner: Option<String> = row.try_get(2)?;
            let registered: Option<String> = row.try_get(3)?;
            // A registered owner is gone when its lease expired or the probe knows it is.
            let gone = || -> Result<bool> {
                let process = processes::registered_at(&row, 3)?;
                Ok(micros(process.lease_expires) < now
                    || self.gone.as_ref().is_some_and(|p| p.is_gone(&process.info)))
            };
            let dead = status == CREATING && owner.is_some() && (registered.is_none() || gone()?);
            if !dead {
                return Err(IndexError::AlreadyExists {
                    creating: status == CREATING,
                });
            }
            let stale: i64 = row.try_get(1)?;
            tracing::warn!(
                watermark = stale,
                owner = owner.as_deref().unwrap_or_default(),
                "taking over a reservation whose owner is gone"
            );
            abandon_in(&mut tx, stale, now).await?;
        }
        let watermark =
            Watermark::new(next as u64).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        upsert_parents(&mut tx, instance, now).await?;
        let inserted = sqlx::query(
            "INSERT INTO instances (watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
                 status, created_at, updated_at, owner_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
        )
        .bind(next)
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(id.sop.as_str())
        .bind(instance.attributes.sop_class_uid.clone())
        .bind(instance.transfer_syntax.clone())
        .bind(CREATING)
        .bind(now)
        .bind(self.owner.map(|o| o.to_string()))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(IndexError::AlreadyExists { creating: true });
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(watermark)
    }

    /// Marks a reserved instance `Created` with its blob's length and checksum, and appends its
    /// change-feed row, in one transaction.
    pub async fn end_create(
        &self,
        watermark: Watermark,
        content_length: u64,
        checksum: &str,
        has_frame_ranges: bool,
    ) -> Result<()> {
        let now = micros(Utc::now());
        let w = watermark.get() as i64;
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE instances SET status = $1, content_length = $2, checksum = $3, has_frame_ranges = $4,
                 updated_at = $5 WHERE watermark = $6 AND status = $7
             RETURNING study_uid, series_uid, sop_uid",
        )
        .bind(CREATED)
        .bind(content_length as i64)
        .bind(checksum.to_owned())
        .bind(i16::from(has_frame_ranges))
        .bind(now)
        .bind(w)
        .bind(CREATING)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(IndexError::NotFound)?;
        let (study, series, sop): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        sqlx::query(
            "INSERT INTO change_feed (timestamp, action, study_uid, series_uid, sop_uid, original_watermark,
                 current_watermark) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(now)
        .bind(ChangeAction::Create as i16)
        .bind(&study)
        .bind(&series)
        .bind(&sop)
        .bind(w)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE change_feed SET current_watermark = $1 WHERE study_uid = $2 AND series_uid = $3 AND sop_uid = $4",
        )
        .bind(w)
        .bind(&study)
        .bind(&series)
        .bind(&sop)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives up a reservation after a failed store: the row goes, and its watermark is queued
    /// for immediate blob removal (whatever was written). No change-feed row: it never existed.
    pub async fn abandon_create(&self, watermark: Watermark) -> Result<()> {
        let now = micros(Utc::now());
        let mut tx = self.pool.begin().await?;
        abandon_in(&mut tx, watermark.get() as i64, now).await?;
        remove_empty_parents(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `Created` instances in `scope`, oldest first.
    pub async fn instances(&self, scope: &RetrieveScope) -> Result<Vec<StoredInstance>> {
        let (clause, binds) = scope.clause(1);
        let sql = format!(
            "SELECT watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax, content_length,
                 checksum, has_frame_ranges FROM instances WHERE status = {CREATED} AND {clause} ORDER BY watermark"
        );
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(bind);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(stored_instance).collect()
    }

    /// Deletes every instance in `scope`: rows and change-feed rows in one transaction, blobs
    /// queued for removal after `delete_delay`. [`IndexError::NotFound`] when nothing matched.
    pub async fn delete(&self, scope: &RetrieveScope, delete_delay: Duration) -> Result<usize> {
        let now = Utc::now();
        let cleanup_after =
            micros(now + chrono::Duration::from_std(delete_delay).unwrap_or(chrono::Duration::MAX));
        let now = micros(now);
        let (clause, binds) = scope.clause(1);
        let sql = format!(
            "DELETE FROM instances WHERE {clause} RETURNING study_uid, series_uid, sop_uid, watermark, status"
        );
        let mut tx = self.pool.begin().await?;
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for bind in binds {
            query = query.bind(bind);
        }
        let removed = query.fetch_all(&mut *tx).await?;
        if removed.is_empty() {
            return Err(IndexError::NotFound);
        }
        for row in &removed {
            let watermark: i64 = row.try_get(3)?;
            let status: i16 = row.try_get(4)?;
            queue_blob_removal(&mut tx, watermark, row, now, cleanup_after).await?;
            let (study, series, sop): (String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            if status == CREATED {
                sqlx::query(
                    "INSERT INTO change_feed (timestamp, action, study_uid, series_uid, sop_uid, original_watermark,
                         current_watermark) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
                )
                .bind(now)
                .bind(ChangeAction::Delete as i16)
                .bind(&study)
                .bind(&series)
                .bind(&sop)
                .bind(watermark)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE change_feed SET current_watermark = NULL WHERE study_uid = $1 AND series_uid = $2 AND sop_uid = $3",
            )
            .bind(&study)
            .bind(&series)
            .bind(&sop)
            .execute(&mut *tx)
            .await?;
        }
        remove_empty_parents(&mut tx).await?;
        tx.commit().await?;
        Ok(removed.len())
    }

    /// Claims up to `limit` queued removals that are due, for `lease`: a claimed row is not
    /// handed to another worker (in this or another process) until the lease ends, or until
    /// the claiming process (this handle's owner) is found gone.
    pub async fn claim_due_removals(
        &self,
        max_retries: u32,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<DeletedInstance>> {
        let now = Utc::now();
        let until =
            micros(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX));
        let rows = sqlx::query(
            "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = $5
             WHERE watermark IN (SELECT watermark FROM deleted_instances
                 WHERE cleanup_after <= $2 AND retry_count <= $3 ORDER BY cleanup_after LIMIT $4)
               AND cleanup_after <= $2
             RETURNING watermark, study_uid, series_uid, sop_uid, retry_count",
        )
        .bind(until)
        .bind(micros(now))
        .bind(i64::from(max_retries))
        .bind(i64::from(limit))
        .bind(self.owner.map(|o| o.to_string()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeletedInstance {
                    instance: versioned(row, 0, 1)?,
                    retry_count: row.try_get::<i64, _>(4)? as u32,
                })
            })
            .collect()
    }

    /// The blobs of a queued removal are gone: forget it.
    pub async fn finish_removal(&self, watermark: Watermark) -> Result<()> {
        sqlx::query("DELETE FROM deleted_instances WHERE watermark = $1")
            .bind(watermark.get() as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A removal failed: count it and retry after `back_off`. Returns the new retry count.
    pub async fn fail_removal(&self, watermark: Watermark, back_off: Duration) -> Result<u32> {
        let after = micros(
            Utc::now() + chrono::Duration::from_std(back_off).unwrap_or(chrono::Duration::MAX),
        );
        let row = sqlx::query(
            "UPDATE deleted_instances SET retry_count = retry_count + 1, cleanup_after = $1, claimed_by = NULL
             WHERE watermark = $2
             RETURNING retry_count",
        )
        .bind(after)
        .bind(watermark.get() as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u32)
    }

    /// Watermarks of rows still `Creating` that were reserved before `older_than` by no
    /// registered process (no owner recorded, or one that is gone): a store that crashed or
    /// hung. The sweeper abandons them. A registered process's reservations are never stale.
    pub async fn stale_creating(&self, older_than: DateTime<Utc>) -> Result<Vec<Watermark>> {
        let rows = sqlx::query(
            "SELECT watermark FROM instances WHERE status = $1 AND created_at < $2
                 AND (owner_id IS NULL OR owner_id NOT IN (SELECT owner_id FROM processes))",
        )
        .bind(CREATING)
        .bind(micros(older_than))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| watermark(row, 0)).collect()
    }

    /// Whether any row (instance or queued removal) refers to `watermark`: a blob whose
    /// watermark has none is an orphan.
    pub async fn is_referenced(&self, watermark: Watermark) -> Result<bool> {
        let w = watermark.get() as i64;
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM instances WHERE watermark = $1) + (SELECT COUNT(*) FROM deleted_instances WHERE watermark = $1)",
        )
        .bind(w)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// The next watermark the index will hand out.
    pub async fn next_watermark(&self) -> Result<u64> {
        let row = sqlx::query("SELECT next_value FROM watermark_sequence WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Change-feed rows with `after < sequence <= after + window` (v1), by sequence.
    pub async fn change_feed_by_sequence(
        &self,
        after: i64,
        window: i64,
    ) -> Result<Vec<ChangeFeedEntry>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence"
        )))
        .bind(after)
        .bind(after.saturating_add(window))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_feed_entry).collect()
    }

    /// Change-feed rows with `start <= timestamp < end`, skipping `offset` rows, at most
    /// `limit` (v2), by time then sequence.
    pub async fn change_feed_by_time(
        &self,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<ChangeFeedEntry>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE timestamp >= $1 AND timestamp < $2 ORDER BY timestamp, sequence LIMIT $3 OFFSET $4"
        )))
        .bind(start.map(micros).unwrap_or(i64::MIN))
        .bind(end.map(micros).unwrap_or(i64::MAX))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_feed_entry).collect()
    }

    /// The newest change-feed row (by sequence; v2 orders by time, which agrees here because
    /// rows are appended with the current time).
    pub async fn change_feed_latest(&self) -> Result<Option<ChangeFeedEntry>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} ORDER BY sequence DESC LIMIT 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(change_feed_entry).transpose()
    }
}

pub(crate) const CHANGE_FEED_SELECT: &str =
    "SELECT sequence, timestamp, action, study_uid, series_uid, sop_uid,
    original_watermark, current_watermark FROM change_feed";

/// Creates or updates the study and series rows of an instance (latest wins, orig A.5).
pub(crate) async fn upsert_parents(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance: &NewInstance,
    now: i64,
) -> Result<()> {
    let id = &instance.id;
    let a = &instance.attributes;
    let patient = a.patient_name.as_deref().map(person_name_search_forms);
    let referring = a
        .referring_physician_name
        .as_deref()
        .map(person_name_search_forms);
    sqlx::query(
            "INSERT INTO studies (study_uid, patient_id, patient_name, patient_birth_date, accession_number,
                 referring_physician_name, study_date, study_description, updated_at, patient_name_folded,
                 patient_name_words, referring_physician_name_folded, referring_physician_name_words)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (study_uid) DO UPDATE SET patient_id = excluded.patient_id,
                 patient_name = excluded.patient_name, patient_birth_date = excluded.patient_birth_date,
                 accession_number = excluded.accession_number,
                 referring_physician_name = excluded.referring_physician_name,
                 study_date = excluded.study_date, study_description = excluded.study_description,
                 updated_at = excluded.updated_at, patient_name_folded = excluded.patient_name_folded,
                 patient_name_words = excluded.patient_name_words,
                 referring_physician_name_folded = excluded.referring_physician_name_folded,
                 referring_physician_name_words = excluded.referring_physician_name_words",
        )
        .bind(id.study.as_str())
        .bind(a.patient_id.clone())
        .bind(a.patient_name.clone())
        .bind(a.patient_birth_date.clone())
        .bind(a.accession_number.clone())
        .bind(a.referring_physician_name.clone())
        .bind(a.study_date.clone())
        .bind(a.study_description.clone())
        .bind(now)
        .bind(patient.as_ref().map(|p| p.0.clone()))
        .bind(patient.map(|p| p.1))
        .bind(referring.as_ref().map(|r| r.0.clone()))
        .bind(referring.map(|r| r.1))
        .execute(&mut **tx)
        .await?;
    sqlx::query(
            "INSERT INTO series (study_uid, series_uid, modality, performed_procedure_step_start_date,
                 manufacturer_model_name, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (study_uid, series_uid) DO UPDATE SET modality = excluded.modality,
                 performed_procedure_step_start_date = excluded.performed_procedure_step_start_date,
                 manufacturer_model_name = excluded.manufacturer_model_name, updated_at = excluded.updated_at",
        )
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(a.modality.clone())
        .bind(a.performed_procedure_step_start_date.clone())
        .bind(a.manufacturer_model_name.clone())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes the `Creating` row with this watermark, if any, and queues its blobs for removal now.
async fn abandon_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    watermark: i64,
    now: i64,
) -> Result<()> {
    let removed = sqlx::query(
        "DELETE FROM instances WHERE watermark = $1 AND status = $2 RETURNING study_uid, series_uid, sop_uid",
    )
    .bind(watermark)
    .bind(CREATING)
    .fetch_all(&mut **tx)
    .await?;
    for row in &removed {
        queue_blob_removal(tx, watermark, row, now, now).await?;
    }
    Ok(())
}

pub(crate) async fn queue_blob_removal(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    watermark: i64,
    row: &AnyRow,
    now: i64,
    cleanup_after: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO deleted_instances (watermark, study_uid, series_uid, sop_uid, deleted_at, cleanup_after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(watermark)
    .bind(row.try_get::<String, _>(0)?)
    .bind(row.try_get::<String, _>(1)?)
    .bind(row.try_get::<String, _>(2)?)
    .bind(now)
    .bind(cleanup_after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn remove_empty_parents(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query(
        "DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instances i
             WHERE i.study_uid = series.study_uid AND i.series_uid = series.series_uid)",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM studies WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = studies.study_uid)")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn watermark(row: &AnyRow, column: usize) -> Result<Watermark> {
    let value: i64 = row.try_get(column)?;
    Watermark::new(value as u64).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn uid(row: &AnyRow, column: usize) -> Result<Uid> {
    let value: String = row.try_get(column)?;
    Uid::parse(&value).map_err(|e| IndexError::Corrupt(e.to_string()))
}

fn versioned(row: &AnyRow, watermark_column: usize, first_uid: usize) -> Result<VersionedInstance> {
    let id = InstanceIdentifier {
        study: uid(row, first_uid)?,
        series: uid(row, first_uid + 1)?,
        sop: uid(row, first_uid + 2)?,
    };
    Ok(VersionedInstance::new(
        id,
        watermark(row, watermark_column)?,
    ))
}

pub(crate) fn stored_instance(row: &AnyRow) -> Result<StoredInstance> {
    Ok(StoredInstance {
        instance: versioned(row, 0, 1)?,
        sop_class_uid: row.try_get(4)?,
        transfer_syntax: row.try_get(5)?,
        content_length: row.try_get::<Option<i64>, _>(6)?.map(|v| v as u64),
        checksum: row.try_get(7)?,
        has_frame_ranges: row.try_get::<i16, _>(8)? != 0,
    })
}

pub(crate) fn change_feed_entry(row: &AnyRow) -> Result<ChangeFeedEntry> {
    let action: i16 = row.try_get(2)?;
    let original: i64 = row.try_get(6)?;
    let current: Option<i64> = row.try_get(7)?;
    Ok(ChangeFeedEntry {
        sequence: row.try_get(0)?,
        timestamp: from_micros(row.try_get(1)?),
        action: if action == ChangeAction::Delete as i16 {
            ChangeAction::Delete
        } else {
            ChangeAction::Create
        },
        instance: versioned(row, 6, 3)?,
        state: match current {
            None => ChangeState::Deleted,
            Some(current) if current == original => ChangeState::Current,
            Some(_) => ChangeState::Replaced,
        },
        current_watermark: current.and_then(|w| Watermark::new(w as u64).ok()),
    })
}

/// `sqlite://./data/index.db` → a URL sqlx opens, creating the file and its folder.
fn sqlite_url(url: &str) -> Result<String, String> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    if path == ":memory:" || path.is_empty() {
        return Ok("sqlite::memory:".into());
    }
    let path = path.split('?').next().unwrap_or(path);
    if let Some(parent) = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    Ok(format!("sqlite://{path}?mode=rwc"))
}

fn mask(url: &str) -> String {
    match url.split_once('@') {
        Some((credentials, rest)) if credentials.contains(':') && credentials.contains("://") => {
            let (scheme_user, _) = credentials.rsplit_once(':').unwrap_or((credentials, ""));
            format!("{scheme_user}:***@{rest}")
        }
        _ => url.to_owned(),
    }
}
