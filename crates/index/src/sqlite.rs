//! The SQLite engine: one file, one writer at a time.
//!
//! Watermarks come from one row bumped by the reserving transaction (its first statement, so
//! the transaction holds SQLite's write lock from the start). Every claim (removals,
//! operations, processes) is a write, and SQLite's single writer already hands each row to one
//! claimer. Migrations: sqlx's lock is a no-op on SQLite, so two processes opening one new file
//! can both try to apply the same migration; the loser's transaction fails and rolls back, and
//! it runs the migrator again as long as another process made progress meanwhile.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateError;
use sqlx::{AnyPool, AssertSqlSafe};

use crate::group::{self, Frame, Framed};
use crate::model::NewInstance;
use crate::processes::ProcessId;
use crate::rows::UidsRow;
use crate::{CREATING, ChangeAction, Completion, IndexError, Result, Tx};

/// How many times a migration that lost a race with another process is run again.
const MIGRATION_ATTEMPTS: u32 = 100;

/// The URL of a private in-memory database.
const MEMORY_URL: &str = "sqlite::memory:";

/// Claims due removals (binds as in `Engine::claim_removals_sql`).
pub(crate) const CLAIM_REMOVALS: &str =
    "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = $5
     WHERE watermark IN (SELECT watermark FROM deleted_instances
         WHERE cleanup_after <= $2 AND retry_count <= $3 ORDER BY cleanup_after LIMIT $4)
       AND cleanup_after <= $2
     RETURNING watermark, study_uid, series_uid, sop_uid, retry_count";

/// Connections a SQLite index reads through.
const READ_CONNECTIONS: u32 = 4;

/// The pools of a SQLite index: readers, and the one connection every write transaction of
/// this process goes through.
pub(crate) struct Pools {
    pub(crate) read: AnyPool,
    /// Held apart from `read` for the reads every request makes; `None` in memory.
    pub(crate) readers: Option<Readers>,
    /// One connection, so this process's writers queue in the pool (in order, without
    /// waking) instead of in SQLite's busy handler, which polls with sleeps of up to 100 ms
    /// and, under concurrent stores, left the write lock idle between them. An in-memory
    /// database is private to its pool, so there this is the read pool.
    pub(crate) write: AnyPool,
}

/// Opens the file (creating it and its folder), sets WAL and brings the schema up to date.
pub(crate) async fn open(url: &str) -> Result<Pools, String> {
    let url = sqlite_url(url)?;
    let read = connect(&url, READ_CONNECTIONS).await?;
    migrate(&read).await?;
    let (write, readers) = if url == MEMORY_URL {
        (read.clone(), None)
    } else {
        let readers = Readers::open(&url).await?;
        (connect_writer(&url).await?, Some(readers))
    };
    Ok(Pools {
        read,
        readers,
        write,
    })
}

/// Connections held apart from [`Readers`]' pool.
const HELD_READERS: u32 = 4;

/// Connections for the reads every request makes (an instance lookup, a search), handed out
/// without sqlx's pool: it pings each connection taken back, on SQLite a round trip to the
/// connection's worker thread that cost as much CPU as the lookup itself. A connection to a
/// local file does not go stale, so none is tested; one whose worker failed (an I/O error, a
/// crashed thread) is dropped by its reader ([`HeldReader::check`]) and replaced by the next
/// caller that draws its slot. A read dropped halfway leaves its connection fit for the next:
/// its worker finishes (or stops) the statement first. Hand-written: a pool crate would be a
/// dependency for these forty lines.
#[derive(Debug)]
pub(crate) struct Readers {
    url: String,
    /// One slot per connection; `None` where one was dropped and is yet to be replaced.
    idle: std::sync::Mutex<Vec<Option<sqlx::AnyConnection>>>,
    permits: tokio::sync::Semaphore,
}

impl Readers {
    async fn open(url: &str) -> Result<Self, String> {
        let mut idle = Vec::with_capacity(HELD_READERS as usize);
        for _ in 0..HELD_READERS {
            idle.push(Some(connect_reader(url).await.map_err(|e| e.to_string())?));
        }
        Ok(Self {
            url: url.to_owned(),
            permits: tokio::sync::Semaphore::new(idle.len()),
            idle: std::sync::Mutex::new(idle),
        })
    }

    /// Waits for a connection; it goes back when the guard is dropped.
    pub(crate) async fn get(&self) -> Result<HeldReader<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| IndexError::Stopped)?;
        let slot = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(IndexError::Stopped)?;
        let connection = match slot {
            Some(connection) => connection,
            None => match connect_reader(&self.url).await {
                Ok(connection) => connection,
                Err(error) => {
                    self.idle
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(None);
                    return Err(error);
                }
            },
        };
        Ok(HeldReader {
            readers: self,
            connection: Some(connection),
            _permit: permit,
        })
    }
}

/// One connection for [`Readers`], outside any pool.
async fn connect_reader(url: &str) -> Result<sqlx::AnyConnection> {
    let pool = connect(url, 1).await.map_err(|reason| IndexError::Open {
        url: crate::mask(url),
        reason,
    })?;
    Ok(pool.acquire().await?.detach())
}

/// A connection of [`Readers`], back to them when dropped.
pub(crate) struct HeldReader<'a> {
    readers: &'a Readers,
    connection: Option<sqlx::AnyConnection>,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl HeldReader<'_> {
    pub(crate) fn connection(&mut self) -> Result<&mut sqlx::AnyConnection> {
        self.connection.as_mut().ok_or(IndexError::Stopped)
    }

    /// Passes on what a read on this connection came to; a failure of the connection itself
    /// drops it, so that its slot gets a new one.
    pub(crate) fn check<T>(&mut self, read: Result<T, sqlx::Error>) -> Result<T> {
        if let Err(sqlx::Error::WorkerCrashed | sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) =
            &read
        {
            self.connection = None;
        }
        Ok(read?)
    }
}

impl Drop for HeldReader<'_> {
    fn drop(&mut self) {
        let connection = self.connection.take();
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
    }
}

/// The one writing connection keeps its temporary data in memory: a write transaction's
/// statement journal (the pages a failed statement or savepoint rolls back) outgrew SQLite's
/// 64 KiB spill threshold about once every eight stores, and each spill created and deleted a
/// temporary file; on ext4 without a journal every deleted inode slows the next file creation.
/// Writes touch tens of pages, so this stays small; reads, whose sorts can be large, keep files.
async fn connect_writer(url: &str) -> Result<AnyPool, String> {
    connect_with(url, 1, "PRAGMA temp_store = MEMORY").await
}

async fn connect(url: &str, connections: u32) -> Result<AnyPool, String> {
    connect_with(url, connections, "PRAGMA temp_store = DEFAULT").await
}

async fn connect_with(
    url: &str,
    connections: u32,
    temp_store: &'static str,
) -> Result<AnyPool, String> {
    AnyPoolOptions::new()
        .max_connections(connections)
        // A connection to a local file cannot go stale, and the ping before each checkout was
        // a round trip to the connection's worker thread in front of every statement.
        .test_before_acquire(false)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut *connection)
                    .await?;
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *connection)
                    .await?;
                sqlx::query(temp_store).execute(&mut *connection).await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// Sets WAL and runs the migrations, again when either failed because another process was
/// doing the same: the database was busy (SQLite answers a lock upgrade that could deadlock
/// at once, without waiting), or a migration was applied meanwhile.
async fn migrate(pool: &AnyPool) -> Result<(), String> {
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let mut attempt = 1;
    loop {
        let before = applied_migrations(pool).await;
        let outcome = match sqlx::query("PRAGMA journal_mode = WAL").execute(pool).await {
            Ok(_) => migrator.run(pool).await.map_err(|error| {
                let busy = match &error {
                    MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => is_busy(e),
                    _ => false,
                };
                (error.to_string(), busy)
            }),
            Err(error) => Err((error.to_string(), is_busy(&error))),
        };
        let Err((error, busy)) = outcome else {
            return Ok(());
        };
        // A failure while another process applied migrations is that race (a table that
        // "already exists"); one that is neither busy nor met progress elsewhere is ours.
        let raced = busy || applied_migrations(pool).await > before;
        if !raced || attempt >= MIGRATION_ATTEMPTS {
            return Err(error);
        }
        tracing::debug!(attempt, %error, "another process migrated the index meanwhile; again");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED, in any of their extended forms.
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// How many migrations are recorded as applied (0 before the migrator's table exists).
async fn applied_migrations(pool: &AnyPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// A reservation in one round trip to the connection's worker thread (every statement costs
/// one, and their thread hand-offs were most of a store's index time): draws a watermark,
/// upserts study (`$1..=$13`, see `crate::bind_study`) and series (`$14..=$17`), and inserts
/// the `Creating` row, returning its watermark. `{taken}` is what the insert does when the UIDs
/// are taken.
///
/// Study and series rows are updated only where an attribute changed: SQLite rewrites an index
/// over a column an `UPDATE` sets even when its value stays, and most stores repeat their
/// study's and series' attributes. Their time is when they were created (results are listed
/// newest first by it), so a store into an existing study and series writes neither row.
const RESERVE: &str =
    "UPDATE watermark_sequence SET next_value = next_value + 1 WHERE id = 1;
     {study};
     {series};
     INSERT INTO instances (watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
         status, created_at, updated_at, owner_id, native_frame_offset, native_frame_length,
         native_frame_count)
     SELECT next_value - 1, $1, $14, $18, $19, $20, $21, $9, $9, $22, $23, $24, $25
     FROM watermark_sequence WHERE id = 1
     {taken}
     RETURNING watermark";

/// [`RESERVE`] with its placeholders filled, `taken` for `{taken}`.
fn reservation(taken: &str) -> String {
    RESERVE
        .replace("{study}", &crate::UPSERT_STUDY_IF_CHANGED)
        .replace(
            "{series}",
            &crate::upsert_series_if_changed(["$1", "$14", "$15", "$16", "$17", "$9"]),
        )
        .replace("{taken}", taken)
}

/// [`RESERVE`] within a transaction: no row when the UIDs are taken.
static RESERVE_IN_TRANSACTION: LazyLock<String> =
    LazyLock::new(|| reservation("ON CONFLICT (study_uid, series_uid, sop_uid) DO NOTHING"));

/// [`RESERVE`] in each frame of a group commit (see `group.rs`): taken UIDs fail the insert,
/// which stops the group's framed run; the group then runs [`reserve`], which decides.
static RESERVE_FRAMED: LazyLock<[String; 4]> = LazyLock::new(|| group::framings(&reservation("")));

/// Completes a reservation in one round trip (see [`RESERVE`]): marks it `Created`
/// (`crate::COMPLETE_RESERVATION`), and, only if that changed a row, appends its change-feed
/// row and points the instance's earlier rows at it (as `crate::append_change` does).
static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{complete};
         INSERT INTO change_feed (timestamp, action, study_uid, series_uid, sop_uid, original_watermark,
             current_watermark)
         SELECT $5, $8, study_uid, series_uid, sop_uid, $6, $6 FROM instances
         WHERE watermark = $6 AND changes() = 1;
         UPDATE change_feed SET current_watermark = $6
         WHERE (study_uid, series_uid, sop_uid) = (SELECT study_uid, series_uid, sop_uid FROM instances WHERE watermark = $6)
           AND changes() = 1",
        complete = crate::COMPLETE_RESERVATION
    )
});

/// [`COMPLETE`] in each frame of a group commit (see `group.rs`). It changes nothing when
/// there is no reservation, so its group goes on either way.
static COMPLETE_FRAMED: LazyLock<[String; 4]> = LazyLock::new(|| group::framings(&COMPLETE));

/// Binds [`RESERVE`]'s arguments.
fn bind_reservation<'q>(
    sql: &'q str,
    instance: &NewInstance,
    now: i64,
    owner: Option<ProcessId>,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>> {
    let a = &instance.attributes;
    let frames = instance.native_frames;
    Ok(
        crate::bind_study(sqlx::query(AssertSqlSafe(sql)), instance, now)
            .bind(instance.id.series.as_str().to_owned())
            .bind(a.modality.clone())
            .bind(a.performed_procedure_step_start_date.clone())
            .bind(a.manufacturer_model_name.clone())
            .bind(instance.id.sop.as_str().to_owned())
            .bind(a.sop_class_uid.clone())
            .bind(instance.transfer_syntax.clone())
            .bind(CREATING)
            .bind(owner.map(|o| o.to_string()))
            .bind(crate::native(frames.map(|n| n.offset))?)
            .bind(crate::native(frames.map(|n| n.length))?)
            .bind(crate::native(frames.map(|n| n.count))?),
    )
}

/// The watermark a reservation's `RETURNING` gave, if any.
fn returned_watermark(rows: &[sqlx::any::AnyRow]) -> Result<Option<i64>> {
    Ok(rows
        .first()
        .map(|row| sqlx::Row::try_get(row, 0))
        .transpose()?)
}

/// Draws a watermark and reserves it for `instance` (see [`RESERVE`]); says which watermark,
/// and whether the row was inserted (false: the UIDs are taken).
pub(crate) async fn reserve(
    tx: &mut Tx<'_>,
    instance: &NewInstance,
    now: i64,
    owner: Option<ProcessId>,
) -> Result<(i64, bool)> {
    let rows = bind_reservation(RESERVE_IN_TRANSACTION.as_str(), instance, now, owner)?
        .fetch_all(&mut **tx)
        .await?;
    match returned_watermark(&rows)? {
        Some(watermark) => Ok((watermark, true)),
        None => {
            let drawn =
                sqlx::query_scalar("SELECT next_value - 1 FROM watermark_sequence WHERE id = 1")
                    .fetch_one(&mut **tx)
                    .await?;
            Ok((drawn, false))
        }
    }
}

/// [`reserve`] in its framed form (see `group.rs`), in one round trip: the reserved
/// watermark. Taken UIDs stop it.
pub(crate) async fn reserve_framed(
    connection: &mut sqlx::AnyConnection,
    frame: Frame,
    instance: &NewInstance,
    now: i64,
    owner: Option<ProcessId>,
) -> Framed<i64> {
    let query = match bind_reservation(frame.pick(&RESERVE_FRAMED), instance, now, owner) {
        Ok(query) => query,
        Err(error) => return Framed::Stopped(error),
    };
    match query.fetch_all(connection).await {
        Ok(rows) => Framed::Ran(returned_watermark(&rows).and_then(|watermark| {
            watermark
                .ok_or_else(|| IndexError::Corrupt("a reservation returned no watermark".into()))
        })),
        Err(error) => Framed::Stopped(error.into()),
    }
}

/// Completes a reservation (see [`COMPLETE`]); [`IndexError::NotFound`] when there is none.
pub(crate) async fn complete(tx: &mut Tx<'_>, completion: Completion) -> Result<()> {
    complete_on(&mut *tx, COMPLETE.as_str(), completion).await?
}

/// [`complete`] in its framed form (see `group.rs`), in one round trip.
pub(crate) async fn complete_framed(
    connection: &mut sqlx::AnyConnection,
    frame: Frame,
    completion: Completion,
) -> Framed<()> {
    match complete_on(connection, frame.pick(&COMPLETE_FRAMED), completion).await {
        Ok(changed) => Framed::Ran(changed),
        Err(error) => Framed::Stopped(error.into()),
    }
}

/// Runs [`COMPLETE`] (in `sql`'s frame); [`IndexError::NotFound`] inside when it changed
/// nothing.
async fn complete_on(
    connection: &mut sqlx::AnyConnection,
    sql: &str,
    completion: Completion,
) -> Result<Result<()>, sqlx::Error> {
    let changed: Vec<UidsRow> = completion
        .bind(sqlx::query_as(AssertSqlSafe(sql)))
        .bind(ChangeAction::Create as i16)
        .fetch_all(connection)
        .await?;
    Ok(if changed.is_empty() {
        Err(IndexError::NotFound)
    } else {
        Ok(())
    })
}

pub(crate) async fn raise_watermarks_above(tx: &mut Tx<'_>, watermark: i64) -> Result<()> {
    sqlx::query(
        "UPDATE watermark_sequence SET next_value = CASE WHEN next_value > $1 THEN next_value ELSE $1 END
         WHERE id = 1",
    )
    .bind(watermark.saturating_add(1))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn peek_next_watermark(pool: &AnyPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT next_value FROM watermark_sequence WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

/// `sqlite://./data/index.db` → a URL sqlx opens, creating the file and its folder.
fn sqlite_url(url: &str) -> Result<String, String> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    if path == ":memory:" || path.is_empty() {
        return Ok(MEMORY_URL.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_reader_is_replaced_by_the_next_caller() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = sqlite_url(&format!("sqlite://{}/index.db", dir.path().display())).unwrap();
        let readers = Readers::open(&url).await.unwrap();
        let one = async |readers: &Readers| {
            let mut reader = readers.get().await.unwrap();
            let value: Result<i64, sqlx::Error> = sqlx::query_scalar("SELECT 7")
                .fetch_one(reader.connection().unwrap())
                .await;
            reader.check(value).unwrap()
        };
        // A failure of the connection itself drops it from its slot.
        {
            let mut reader = readers.get().await.unwrap();
            assert!(reader.check::<()>(Err(sqlx::Error::WorkerCrashed)).is_err());
        }
        let slots = || {
            readers
                .idle
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.is_none())
                .count()
        };
        assert_eq!(slots(), 1, "the failed connection's slot is empty");
        // Every slot in use at once: the empty one gets a new connection.
        let held: Vec<_> = take_readers(&readers, HELD_READERS as usize).await;
        assert_eq!(held.len(), HELD_READERS as usize);
        drop(held);
        assert_eq!(slots(), 0, "replaced");
        assert_eq!(one(&readers).await, 7);
    }

    /// Takes `n` readers at once.
    async fn take_readers(readers: &Readers, n: usize) -> Vec<HeldReader<'_>> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(readers.get().await.unwrap());
        }
        held
    }
}
