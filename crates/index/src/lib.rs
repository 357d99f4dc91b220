//! Tessera's index: which instances exist, under which watermark, in which state; the change
//! feed; the queue of deleted instances whose blobs are still to be removed; durable
//! operations; the processes serving from it. This crate is the only one with SQL.
//!
//! One interface, [`InstanceIndex`], over two engines, each in its own module with its own
//! migrations: [`sqlite`](Engine::Sqlite) (embedded, the default) and
//! [`postgres`](Engine::Postgres) (several processes on one database). The statements both
//! engines understand verbatim run through sqlx's `Any` driver, so they are written once;
//! what differs (connecting, migrating without racing another process, handing out
//! watermarks, claiming work) is in the engine's module. Rows are read by column name into
//! typed structs (`rows.rs`), and every value reaches the database as a bind.
//!
//! Guarantees callers rely on:
//! - a watermark is handed out once, ever ([`InstanceIndex::begin_create`]);
//! - an instance is visible (`Created`) only after [`InstanceIndex::end_create`], which also
//!   appends its change-feed row in the same transaction;
//! - [`InstanceIndex::delete`] removes rows and appends change-feed rows in one transaction and
//!   queues the blobs for removal; no blob is touched by the index;
//! - a queued removal, an operation and a dead process are each claimed by one caller at a
//!   time, in this process or another.

mod adoption;
mod group;
mod migration;
mod model;
mod operations;
mod postgres;
mod processes;
mod rows;
mod search;
mod sqlite;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AnyPool, AssertSqlSafe};
use tessera_core::{Watermark, person_name_search_forms};

pub use adoption::{Adoption, FoundInstance};
pub use model::{
    ChangeAction, ChangeFeedEntry, ChangeState, DeletedInstance, NativeFrames, NewInstance,
    RetrieveScope, StoredInstance,
};
pub use operations::{Acquisition, OperationRecord, OperationResults, OperationStatus};
pub use processes::{GoneProbe, ProcessId, ProcessInfo, RegisteredProcess};
pub use search::QidoRow;

use rows::{ChangeFeedRow, InstanceRow, RemovalRow, UidsRow};

/// The SQL engine behind an index, chosen by the URL's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (`sqlite://PATH`): one writer at a time, which serializes every claim. Migrations
    /// retry when another process applied one meanwhile.
    Sqlite,
    /// PostgreSQL (`postgres://…`): watermarks from a `SEQUENCE`, work claimed with
    /// `FOR UPDATE SKIP LOCKED`, migrations under an advisory lock.
    Postgres,
}

impl Engine {
    /// The engine a URL names, if any.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    /// Makes every later watermark greater than `watermark` (adoption of found blobs).
    async fn raise_watermarks_above(self, tx: &mut Tx<'_>, watermark: i64) -> Result<()> {
        match self {
            Self::Sqlite => sqlite::raise_watermarks_above(tx, watermark).await,
            Self::Postgres => postgres::raise_watermarks_above(tx, watermark).await,
        }
    }

    /// The watermark the next reservation will get at the earliest.
    async fn peek_next_watermark(self, pool: &AnyPool) -> Result<i64> {
        match self {
            Self::Sqlite => sqlite::peek_next_watermark(pool).await,
            Self::Postgres => postgres::peek_next_watermark(pool).await,
        }
    }

    /// Orders this transaction's change-feed rows after those of every transaction that
    /// commits before it (SQLite's single writer does already).
    async fn lock_change_feed(self, tx: &mut Tx<'_>) -> Result<()> {
        match self {
            Self::Sqlite => Ok(()),
            Self::Postgres => postgres::lock_change_feed(tx).await,
        }
    }

    /// How a write transaction begins: on SQLite `BEGIN IMMEDIATE`, so that it holds the write
    /// lock from the start and never fails upgrading a read (busy snapshot) halfway.
    fn begin_sql(self) -> &'static str {
        match self {
            Self::Sqlite => "BEGIN IMMEDIATE",
            Self::Postgres => "BEGIN",
        }
    }

    /// Whether a search passes a study or series as visible on its absence from the list of
    /// keys with a `Creating` instance before it looks for a `Created` instance (see
    /// `InstanceIndex::search`). SQLite reads that short list once per search and saves a
    /// lookup per candidate row; PostgreSQL's planner may turn the `EXISTS` under that `OR` into
    /// a hash of every visible instance, so it keeps the plain `EXISTS` (a cheap semi-join).
    fn screens_visibility_by_reservations(self) -> bool {
        self == Self::Sqlite
    }

    /// Claims due removals: binds `$1` new `cleanup_after`, `$2` now, `$3` max retries,
    /// `$4` limit, `$5` claimer; returns the claimed rows.
    fn claim_removals_sql(self) -> &'static str {
        match self {
            Self::Sqlite => sqlite::CLAIM_REMOVALS,
            Self::Postgres => postgres::CLAIM_REMOVALS,
        }
    }
}

pub(crate) type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

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
    /// The group commit a write was part of failed (SQLite; see `group.rs`).
    #[error("{0}")]
    Grouped(Arc<IndexError>),
    /// The task that commits writes has stopped (the runtime is shutting down).
    #[error("the index writer has stopped")]
    Stopped,
}

impl IndexError {
    /// Whether the database is unreachable or saturated (a client may retry later), rather
    /// than the request or the index being at fault.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Open { .. } | Self::Stopped => true,
            Self::Grouped(error) => error.is_unavailable(),
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
                    // SQLITE_BUSY, SQLITE_LOCKED; PostgreSQL's classes 08 (connection
                    // exception) and 53 (insufficient resources), 57P01-57P03 (shutting down,
                    // cannot connect now), and 40001/40P01 (serialization failure, deadlock:
                    // the transaction was rolled back and may be retried).
                    .is_some_and(|code| {
                        code == "5"
                            || code == "6"
                            || code.starts_with("08")
                            || code.starts_with("53")
                            || code.starts_with("57P0")
                            || code == "40001"
                            || code == "40P01"
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
    /// On SQLite, connections held apart for the reads every request makes.
    readers: Option<Arc<sqlite::Readers>>,
    /// The pool write transactions begin on: on SQLite one connection (see `sqlite::Pools`),
    /// on PostgreSQL `pool` itself.
    pub(crate) writer: AnyPool,
    /// On SQLite, the queue through which the hot writes share commits.
    groups: Option<group::CommitGroups>,
    pub(crate) engine: Engine,
    /// The process recorded as the owner of reservations made through this handle.
    pub(crate) owner: Option<ProcessId>,
    /// Tells whether a registered owner is gone (see [`GoneProbe`]).
    pub(crate) gone: Option<GoneProbe>,
}

/// A connection for a read every request makes (see [`InstanceIndex::reader`]).
pub(crate) enum Reader<'a> {
    Held(sqlite::HeldReader<'a>),
    Pooled(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl Reader<'_> {
    pub(crate) fn connection(&mut self) -> Result<&mut sqlx::AnyConnection> {
        match self {
            Self::Held(held) => held.connection(),
            Self::Pooled(pooled) => Ok(&mut *pooled),
        }
    }

    /// Passes on what a read came to (see `sqlite::HeldReader::check`).
    pub(crate) fn check<T>(&mut self, read: Result<T, sqlx::Error>) -> Result<T> {
        match self {
            Self::Held(held) => held.check(read),
            Self::Pooled(_) => Ok(read?),
        }
    }
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

pub(crate) fn from_micros(value: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| IndexError::Corrupt(format!("timestamp {value}")))
}

/// `now + duration` in microseconds, saturating far in the future.
pub(crate) fn micros_after(duration: Duration) -> i64 {
    let now = Utc::now();
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map_or(i64::MAX, micros)
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
    /// `postgres://…`) and brings its schema up to date. Several processes may open one new
    /// database at once: each engine serializes its migrations (see [`Engine`]).
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let open_error = |reason: String| IndexError::Open {
            url: mask(url),
            reason,
        };
        let engine = Engine::of(url).ok_or_else(|| {
            open_error("expected sqlite://PATH or postgres://USER@HOST/DB".into())
        })?;
        let (pool, readers, writer) = match engine {
            Engine::Sqlite => sqlite::open(url)
                .await
                .map(|p| (p.read, p.readers.map(Arc::new), p.write)),
            Engine::Postgres => postgres::open(url).await.map(|p| (p.clone(), None, p)),
        }
        .map_err(open_error)?;
        let groups = (engine == Engine::Sqlite).then(|| group::CommitGroups::start(writer.clone()));
        Ok(Self {
            pool,
            readers,
            writer,
            groups,
            engine,
            owner: None,
            gone: None,
        })
    }

    /// A connection for a read every request makes: one of SQLite's held readers, else one
    /// from the pool.
    pub(crate) async fn reader(&self) -> Result<Reader<'_>> {
        Ok(match &self.readers {
            Some(readers) => Reader::Held(readers.get().await?),
            None => Reader::Pooled(self.pool.acquire().await?),
        })
    }

    /// A write transaction (see `Engine::begin_sql`).
    pub(crate) async fn begin(&self) -> Result<Tx<'static>> {
        let _asking = self
            .groups
            .as_ref()
            .map(group::CommitGroups::ask_for_writer);
        Ok(self.writer.begin_with(self.engine.begin_sql()).await?)
    }

    /// Runs `work` in a write transaction and commits it: on SQLite as part of the next
    /// group commit (see `group.rs`), which first runs `framed`, the same write's framed form;
    /// elsewhere, or without a framed form, in a transaction of its own.
    pub(crate) async fn write<T, F>(
        &self,
        work: F,
        framed: Option<group::FramedWork<T>>,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> Fn(&'a mut Tx<'c>) -> group::WriteFuture<'a, T> + Send + 'static,
    {
        if let (Some(groups), Some(framed)) = (&self.groups, framed) {
            return groups.write(work, framed).await;
        }
        let mut tx = self.begin().await?;
        let value = work(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// The engine behind this index.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Reserves a watermark and a `Creating` row for an instance about to be stored, owned by
    /// this handle's process ([`Self::with_owner`]), and upserts its study and series (latest
    /// wins). Fails with [`IndexError::AlreadyExists`] if the UIDs are taken, except by a dead
    /// reservation (its owner unregistered or its lease expired), which is abandoned (blobs
    /// queued for removal) and replaced in the same transaction.
    pub async fn begin_create(&self, instance: &NewInstance) -> Result<Watermark> {
        let instance = Arc::new(instance.clone());
        let framed = (self.engine == Engine::Sqlite).then(|| {
            let (instance, owner) = (instance.clone(), self.owner);
            group::framed(move |connection, frame| {
                let instance = instance.clone();
                Box::pin(async move {
                    let now = micros(Utc::now());
                    sqlite::reserve_framed(connection, frame, &instance, now, owner)
                        .await
                        .and_then(|next| {
                            Watermark::new(next as u64)
                                .map_err(|e| IndexError::Corrupt(e.to_string()))
                        })
                })
            })
        });
        let this = self.clone();
        self.write(
            move |tx| {
                let (this, instance) = (this.clone(), instance.clone());
                Box::pin(async move { this.reserve(tx, &instance).await })
            },
            framed,
        )
        .await
    }

    /// `begin_create` within `tx`.
    async fn reserve(&self, tx: &mut Tx<'_>, instance: &NewInstance) -> Result<Watermark> {
        let now = micros(Utc::now());
        // The write comes first so that SQLite takes its write lock at once (no upgrade
        // deadlock). The study row is locked next (the upsert), before any instance row, the
        // same order every transaction that removes instances follows.
        // The reservation row is inserted first: the UIDs are free for nearly every store, and
        // then these are the only statements about the instance.
        let (next, inserted) = match self.engine {
            Engine::Sqlite => sqlite::reserve(tx, instance, now, self.owner).await?,
            Engine::Postgres => {
                let next = postgres::next_watermark(tx).await?;
                upsert_parents(tx, instance, now).await?;
                let inserted = insert_reservation(tx, next, instance, now, self.owner).await?;
                (next, inserted)
            }
        };
        let watermark =
            Watermark::new(next as u64).map_err(|e| IndexError::Corrupt(e.to_string()))?;
        if inserted {
            return Ok(watermark);
        }
        let id = &instance.id;
        let existing: Option<rows::ReservationRow> = sqlx::query_as(
            "SELECT i.status, i.watermark, i.owner_id, p.owner_id AS registered_id, p.host, p.local_key,
                 p.pid, p.start_ticks, p.started_at, p.lease_expires
             FROM instances i LEFT JOIN processes p ON p.owner_id = i.owner_id
             WHERE i.study_uid = $1 AND i.series_uid = $2 AND i.sop_uid = $3",
        )
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(id.sop.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        // Taken by a row this transaction cannot see (PostgreSQL: committed after its snapshot).
        let Some(row) = existing else {
            return Err(IndexError::AlreadyExists { creating: true });
        };
        let creating = row.status == CREATING;
        let dead = creating
            && row.owner_id.is_some()
            && match row.registered()? {
                None => true,
                // A registered owner is gone when its lease expired or the probe knows it is.
                Some(process) => {
                    micros(process.lease_expires) < now
                        || self.gone.as_ref().is_some_and(|p| p.is_gone(&process.info))
                }
            };
        if !dead {
            return Err(IndexError::AlreadyExists { creating });
        }
        tracing::warn!(
            watermark = row.watermark,
            owner = row.owner_id.as_deref().unwrap_or_default(),
            "taking over a reservation whose owner is gone"
        );
        abandon_in(tx, row.watermark, now).await?;
        if insert_reservation(tx, next, instance, now, self.owner).await? {
            Ok(watermark)
        } else {
            Err(IndexError::AlreadyExists { creating: true })
        }
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
        let w = db_watermark(watermark);
        let length = i64::try_from(content_length)
            .map_err(|_| IndexError::Corrupt(format!("content length {content_length}")))?;
        let completion = Completion {
            watermark: w,
            content_length: length,
            checksum: checksum.to_owned(),
            has_frame_ranges,
            now,
        };
        let engine = self.engine;
        let framed = (engine == Engine::Sqlite).then(|| {
            let completion = completion.clone();
            group::framed(move |connection, frame| {
                let completion = completion.clone();
                Box::pin(
                    async move { sqlite::complete_framed(connection, frame, completion).await },
                )
            })
        });
        self.write(
            move |tx| {
                let completion = completion.clone();
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        return sqlite::complete(tx, completion).await;
                    }
                    let row: UidsRow = completion
                        .bind(sqlx::query_as(COMPLETE_RESERVATION))
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or(IndexError::NotFound)?;
                    append_change(engine, tx, now, ChangeAction::Create, &row, w).await
                })
            },
            framed,
        )
        .await
    }

    /// Gives up a reservation after a failed store: the row goes, and its watermark is queued
    /// for immediate blob removal (whatever was written). No change-feed row: it never existed.
    pub async fn abandon_create(&self, watermark: Watermark) -> Result<()> {
        let now = micros(Utc::now());
        let mut tx = self.begin().await?;
        if let Some(study) = abandon_in(&mut tx, db_watermark(watermark), now).await? {
            remove_empty_parents(&mut tx, &study).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `Created` instances in `scope`, oldest first.
    pub async fn instances(&self, scope: &RetrieveScope) -> Result<Vec<StoredInstance>> {
        let (clause, uids) = scope.clause(2);
        let sql = format!("{INSTANCE_SELECT} WHERE status = $1 AND {clause} ORDER BY watermark");
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut query = sqlx::query_as::<_, InstanceRow>(AssertSqlSafe(sql)).bind(CREATED);
        for uid in uids {
            query = query.bind(uid);
        }
        let mut reader = self.reader().await?;
        let rows = query.fetch_all(reader.connection()?).await;
        let rows = reader.check(rows)?;
        rows.into_iter().map(InstanceRow::into_stored).collect()
    }

    /// Deletes every instance in `scope`: rows and change-feed rows in one transaction, blobs
    /// queued for removal after `delete_delay`. [`IndexError::NotFound`] when nothing matched.
    pub async fn delete(&self, scope: &RetrieveScope, delete_delay: Duration) -> Result<usize> {
        let now = micros(Utc::now());
        let cleanup_after = micros_after(delete_delay);
        let (clause, uids) = scope.clause(1);
        let study = scope.study().to_string();
        let sql = format!(
            "DELETE FROM instances WHERE {clause} RETURNING study_uid, series_uid, sop_uid, watermark, status"
        );
        let mut tx = self.begin().await?;
        lock_study(&mut tx, &study).await?;
        // Safe: the SQL is built from constant fragments and numbered placeholders; values are bound.
        let mut query = sqlx::query_as::<_, rows::DeletedRow>(AssertSqlSafe(sql));
        for uid in uids {
            query = query.bind(uid);
        }
        let removed = query.fetch_all(&mut *tx).await?;
        if removed.is_empty() {
            return Err(IndexError::NotFound);
        }
        for row in &removed {
            queue_blob_removal(&mut tx, row.watermark, &row.uids, now, cleanup_after).await?;
            if row.status == CREATED {
                append_change(
                    self.engine,
                    &mut tx,
                    now,
                    ChangeAction::Delete,
                    &row.uids,
                    row.watermark,
                )
                .await?;
            } else {
                mark_feed_deleted(&mut tx, &row.uids).await?;
            }
        }
        remove_empty_parents(&mut tx, &study).await?;
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
        let rows: Vec<RemovalRow> = sqlx::query_as(self.engine.claim_removals_sql())
            .bind(micros_after(lease))
            .bind(micros(Utc::now()))
            .bind(i64::from(max_retries))
            .bind(i64::from(limit))
            .bind(self.owner.map(|o| o.to_string()))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(RemovalRow::into_deleted).collect()
    }

    /// The blobs of a queued removal are gone: forget it.
    pub async fn finish_removal(&self, watermark: Watermark) -> Result<()> {
        sqlx::query("DELETE FROM deleted_instances WHERE watermark = $1")
            .bind(db_watermark(watermark))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A removal failed: count it and retry after `back_off`. Returns the new retry count.
    pub async fn fail_removal(&self, watermark: Watermark, back_off: Duration) -> Result<u32> {
        let retries: i64 = sqlx::query_scalar(
            "UPDATE deleted_instances SET retry_count = retry_count + 1, cleanup_after = $1, claimed_by = NULL
             WHERE watermark = $2
             RETURNING retry_count",
        )
        .bind(micros_after(back_off))
        .bind(db_watermark(watermark))
        .fetch_one(&self.pool)
        .await?;
        u32::try_from(retries).map_err(|_| IndexError::Corrupt(format!("retry count {retries}")))
    }

    /// Watermarks of rows still `Creating` that were reserved before `older_than` by no
    /// registered process (no owner recorded, or one that is gone): a store that crashed or
    /// hung. The sweeper abandons them. A registered process's reservations are never stale.
    pub async fn stale_creating(&self, older_than: DateTime<Utc>) -> Result<Vec<Watermark>> {
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT watermark FROM instances WHERE status = $1 AND created_at < $2
                 AND (owner_id IS NULL OR owner_id NOT IN (SELECT owner_id FROM processes))",
        )
        .bind(CREATING)
        .bind(micros(older_than))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(rows::watermark).collect()
    }

    /// Whether any row (instance or queued removal) refers to `watermark`: a blob whose
    /// watermark has none is an orphan.
    pub async fn is_referenced(&self, watermark: Watermark) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM instances WHERE watermark = $1)
                 + (SELECT COUNT(*) FROM deleted_instances WHERE watermark = $1)",
        )
        .bind(db_watermark(watermark))
        .fetch_one(&self.pool)
        .await?;
        Ok(count > 0)
    }

    /// The next watermark the index will hand out (at the earliest: on PostgreSQL, concurrent
    /// reservations may take it first; watermarks have gaps but never repeat).
    pub async fn next_watermark(&self) -> Result<u64> {
        let next = self.engine.peek_next_watermark(&self.pool).await?;
        u64::try_from(next).map_err(|_| IndexError::Corrupt(format!("next watermark {next}")))
    }

    /// Change-feed rows with `after < sequence <= after + window` (v1), by sequence.
    pub async fn change_feed_by_sequence(
        &self,
        after: i64,
        window: i64,
    ) -> Result<Vec<ChangeFeedEntry>> {
        let rows: Vec<ChangeFeedRow> = sqlx::query_as(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence"
        )))
        .bind(after)
        .bind(after.saturating_add(window))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ChangeFeedRow::into_entry).collect()
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
        let rows: Vec<ChangeFeedRow> = sqlx::query_as(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE timestamp >= $1 AND timestamp < $2
             ORDER BY timestamp, sequence LIMIT $3 OFFSET $4"
        )))
        .bind(start.map(micros).unwrap_or(i64::MIN))
        .bind(end.map(micros).unwrap_or(i64::MAX))
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ChangeFeedRow::into_entry).collect()
    }

    /// The newest change-feed row (by sequence; v2 orders by time, which agrees here because
    /// rows are appended with the current time).
    pub async fn change_feed_latest(&self) -> Result<Option<ChangeFeedEntry>> {
        let row: Option<ChangeFeedRow> = sqlx::query_as(AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} ORDER BY sequence DESC LIMIT 1"
        )))
        .fetch_optional(&self.pool)
        .await?;
        row.map(ChangeFeedRow::into_entry).transpose()
    }
}

pub(crate) const CHANGE_FEED_SELECT: &str =
    "SELECT sequence, timestamp, action, study_uid, series_uid, sop_uid,
    original_watermark, current_watermark FROM change_feed";

pub(crate) const INSTANCE_SELECT: &str =
    "SELECT watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
    content_length, checksum, has_frame_ranges, native_frame_offset, native_frame_length,
    native_frame_count FROM instances";

/// Marks a reservation `Created` (binds as in [`Completion::bind`]), returning its UIDs.
pub(crate) const COMPLETE_RESERVATION: &str =
    "UPDATE instances SET status = $1, content_length = $2, checksum = $3, has_frame_ranges = $4,
         updated_at = $5 WHERE watermark = $6 AND status = $7
     RETURNING study_uid, series_uid, sop_uid";

/// What `end_create` records about a stored instance.
#[derive(Clone)]
pub(crate) struct Completion {
    pub(crate) watermark: i64,
    pub(crate) content_length: i64,
    pub(crate) checksum: String,
    pub(crate) has_frame_ranges: bool,
    pub(crate) now: i64,
}

impl Completion {
    /// Binds `$1..=$7` of [`COMPLETE_RESERVATION`].
    pub(crate) fn bind<'q, O>(
        self,
        query: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
        query
            .bind(CREATED)
            .bind(self.content_length)
            .bind(self.checksum)
            .bind(i16::from(self.has_frame_ranges))
            .bind(self.now)
            .bind(self.watermark)
            .bind(CREATING)
    }
}

/// Inserts a `Creating` row for `instance` under watermark `next`, unless its UIDs are taken;
/// says whether it did.
async fn insert_reservation(
    tx: &mut Tx<'_>,
    next: i64,
    instance: &NewInstance,
    now: i64,
    owner: Option<ProcessId>,
) -> Result<bool> {
    let id = &instance.id;
    let inserted = sqlx::query(
        "INSERT INTO instances (watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
             status, created_at, updated_at, owner_id, native_frame_offset, native_frame_length,
             native_frame_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11, $12)
         ON CONFLICT (study_uid, series_uid, sop_uid) DO NOTHING",
    )
    .bind(next)
    .bind(id.study.as_str())
    .bind(id.series.as_str())
    .bind(id.sop.as_str())
    .bind(instance.attributes.sop_class_uid.clone())
    .bind(instance.transfer_syntax.clone())
    .bind(CREATING)
    .bind(now)
    .bind(owner.map(|o| o.to_string()))
    .bind(native(instance.native_frames.map(|n| n.offset))?)
    .bind(native(instance.native_frames.map(|n| n.length))?)
    .bind(native(instance.native_frames.map(|n| n.count))?)
    .execute(&mut **tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// A native frame layout's number as the index stores it (at most `i64::MAX`).
pub(crate) fn native(value: Option<u64>) -> Result<Option<i64>> {
    value
        .map(|v| {
            i64::try_from(v).map_err(|_| IndexError::Corrupt(format!("native frame value {v}")))
        })
        .transpose()
}

/// A watermark as the index stores it (`Watermark` is at most `i64::MAX`).
pub(crate) fn db_watermark(watermark: Watermark) -> i64 {
    i64::try_from(watermark.get()).unwrap_or(i64::MAX)
}

/// Locks a study's row for the rest of the transaction (a no-op write: SQLite's single writer
/// has it already; on PostgreSQL it orders removals after a concurrent store into the study,
/// which upserts the same row first, so neither deadlocks nor sees the study empty wrongly).
pub(crate) async fn lock_study(tx: &mut Tx<'_>, study: &str) -> Result<()> {
    sqlx::query("UPDATE studies SET study_uid = study_uid WHERE study_uid = $1")
        .bind(study.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Appends a change-feed row for `uids` and points the instance's earlier rows at its current
/// watermark (`Create`) or at none (`Delete`).
pub(crate) async fn append_change(
    engine: Engine,
    tx: &mut Tx<'_>,
    now: i64,
    action: ChangeAction,
    uids: &UidsRow,
    watermark: i64,
) -> Result<()> {
    let current = (action == ChangeAction::Create).then_some(watermark);
    engine.lock_change_feed(tx).await?;
    sqlx::query(
        "INSERT INTO change_feed (timestamp, action, study_uid, series_uid, sop_uid, original_watermark,
             current_watermark) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now)
    .bind(action as i16)
    .bind(uids.study_uid.clone())
    .bind(uids.series_uid.clone())
    .bind(uids.sop_uid.clone())
    .bind(watermark)
    .bind(current)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE change_feed SET current_watermark = $1 WHERE study_uid = $2 AND series_uid = $3 AND sop_uid = $4",
    )
    .bind(current)
    .bind(uids.study_uid.clone())
    .bind(uids.series_uid.clone())
    .bind(uids.sop_uid.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks every change-feed row of an instance deleted (it is gone without a delete row of its
/// own: a reservation that never became visible).
async fn mark_feed_deleted(tx: &mut Tx<'_>, uids: &UidsRow) -> Result<()> {
    sqlx::query(
        "UPDATE change_feed SET current_watermark = NULL WHERE study_uid = $1 AND series_uid = $2 AND sop_uid = $3",
    )
    .bind(uids.study_uid.clone())
    .bind(uids.series_uid.clone())
    .bind(uids.sop_uid.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Creates or updates the study row of an instance (latest wins, orig A.5; an instance without
/// a PatientID leaves the study's as it is, as the original's v2 does). Binds as in
/// [`bind_study`]. Its time is set only when the row is created: studies are listed newest first
/// by when they were created, as the original lists them (by its StudyKey).
const UPSERT_STUDY: &str =
    "INSERT INTO studies (study_uid, patient_id, patient_name, patient_birth_date, accession_number,
         referring_physician_name, study_date, study_description, created_at, patient_name_folded,
         patient_name_words, referring_physician_name_folded, referring_physician_name_words)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (study_uid) DO UPDATE SET patient_id = COALESCE(excluded.patient_id, studies.patient_id),
         patient_name = excluded.patient_name, patient_birth_date = excluded.patient_birth_date,
         accession_number = excluded.accession_number,
         referring_physician_name = excluded.referring_physician_name,
         study_date = excluded.study_date, study_description = excluded.study_description,
         patient_name_folded = excluded.patient_name_folded,
         patient_name_words = excluded.patient_name_words,
         referring_physician_name_folded = excluded.referring_physician_name_folded,
         referring_physician_name_words = excluded.referring_physician_name_words";

/// A `WHERE` for [`UPSERT_STUDY`]'s update: some attribute it sets differs from the row's.
const STUDY_CHANGED: &str =
    "WHERE (studies.patient_id, studies.patient_name, studies.patient_birth_date,
         studies.accession_number, studies.referring_physician_name, studies.study_date,
         studies.study_description, studies.patient_name_folded, studies.patient_name_words,
         studies.referring_physician_name_folded, studies.referring_physician_name_words)
     IS DISTINCT FROM (COALESCE(excluded.patient_id, studies.patient_id), excluded.patient_name,
         excluded.patient_birth_date, excluded.accession_number, excluded.referring_physician_name,
         excluded.study_date, excluded.study_description, excluded.patient_name_folded,
         excluded.patient_name_words, excluded.referring_physician_name_folded,
         excluded.referring_physician_name_words)";

/// [`UPSERT_STUDY`] that updates the row only where an attribute changed: most stores repeat
/// their study's attributes. On PostgreSQL the row is locked either way (`ON CONFLICT DO
/// UPDATE` locks the row it finds whether or not its `WHERE` holds), as the lock order of
/// stores and deletes needs.
pub(crate) static UPSERT_STUDY_IF_CHANGED: LazyLock<String> =
    LazyLock::new(|| format!("{UPSERT_STUDY} {STUDY_CHANGED}"));

/// Creates or updates the series row of an instance (latest wins), only where an attribute
/// changed; `$1` and `$2` are the study and series UIDs, `$6` the time (a new row's creation
/// time).
static UPSERT_SERIES_IF_CHANGED: LazyLock<String> =
    LazyLock::new(|| upsert_series_if_changed(["$1", "$2", "$3", "$4", "$5", "$6"]));

/// The series upsert that updates a row only where an attribute changed, its values at
/// `placeholders`: study UID, series UID, Modality, PerformedProcedureStepStartDate,
/// ManufacturerModelName and the time (a new row's creation time).
pub(crate) fn upsert_series_if_changed(placeholders: [&str; 6]) -> String {
    let [study, series, modality, performed, model, time] = placeholders;
    format!(
        "INSERT INTO series (study_uid, series_uid, modality, performed_procedure_step_start_date,
             manufacturer_model_name, created_at) VALUES ({study}, {series}, {modality}, {performed}, {model}, {time})
         ON CONFLICT (study_uid, series_uid) DO UPDATE SET modality = excluded.modality,
             performed_procedure_step_start_date = excluded.performed_procedure_step_start_date,
             manufacturer_model_name = excluded.manufacturer_model_name
         {SERIES_CHANGED}"
    )
}

/// A `WHERE` for a series upsert's update: some attribute it sets differs from the row's.
const SERIES_CHANGED: &str =
    "WHERE (series.modality, series.performed_procedure_step_start_date, series.manufacturer_model_name)
         IS DISTINCT FROM (excluded.modality, excluded.performed_procedure_step_start_date,
             excluded.manufacturer_model_name)";

/// Binds `$1..=$13` of [`UPSERT_STUDY`]: `$1` is the study UID and `$9` the time (a new row's
/// creation time).
pub(crate) fn bind_study<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    instance: &NewInstance,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let a = &instance.attributes;
    let patient = a.patient_name.as_deref().map(person_name_search_forms);
    let referring = a
        .referring_physician_name
        .as_deref()
        .map(person_name_search_forms);
    query
        .bind(instance.id.study.as_str().to_owned())
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
}

/// Creates or updates the study and series rows of an instance (latest wins; a row's time is
/// when it was created).
pub(crate) async fn upsert_parents(
    tx: &mut Tx<'_>,
    instance: &NewInstance,
    now: i64,
) -> Result<()> {
    let id = &instance.id;
    let a = &instance.attributes;
    bind_study(
        sqlx::query(AssertSqlSafe(UPSERT_STUDY_IF_CHANGED.as_str())),
        instance,
        now,
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(AssertSqlSafe(UPSERT_SERIES_IF_CHANGED.as_str()))
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

/// Removes the `Creating` row with this watermark, if any, and queues its blobs for removal
/// now. Returns its study when there was one. The caller holds the study's lock already or
/// takes no other lock after this (a store replacing a dead reservation of its own instance).
async fn abandon_in(tx: &mut Tx<'_>, watermark: i64, now: i64) -> Result<Option<String>> {
    let removed: Option<UidsRow> = sqlx::query_as(
        "DELETE FROM instances WHERE watermark = $1 AND status = $2 RETURNING study_uid, series_uid, sop_uid",
    )
    .bind(watermark)
    .bind(CREATING)
    .fetch_optional(&mut **tx)
    .await?;
    match removed {
        Some(uids) => {
            queue_blob_removal(tx, watermark, &uids, now, now).await?;
            Ok(Some(uids.study_uid))
        }
        None => Ok(None),
    }
}

pub(crate) async fn queue_blob_removal(
    tx: &mut Tx<'_>,
    watermark: i64,
    uids: &UidsRow,
    now: i64,
    cleanup_after: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO deleted_instances (watermark, study_uid, series_uid, sop_uid, deleted_at, cleanup_after)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(watermark)
    .bind(uids.study_uid.clone())
    .bind(uids.series_uid.clone())
    .bind(uids.sop_uid.clone())
    .bind(now)
    .bind(cleanup_after)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes the series of `study` left without instances, then the study if it has none left.
pub(crate) async fn remove_empty_parents(tx: &mut Tx<'_>, study: &str) -> Result<()> {
    sqlx::query(
        "DELETE FROM series WHERE study_uid = $1 AND NOT EXISTS (SELECT 1 FROM instances i
             WHERE i.study_uid = series.study_uid AND i.series_uid = series.series_uid)",
    )
    .bind(study.to_owned())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM studies WHERE study_uid = $1
             AND NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = studies.study_uid)",
    )
    .bind(study.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(())
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
