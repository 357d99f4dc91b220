//! The SQLite engine: one file, one writer at a time.
//!
//! Watermarks come from one row bumped by the reserving transaction (its first statement, so
//! the transaction holds SQLite's write lock from the start). Every claim (removals,
//! operations, processes) is a write, and SQLite's single writer already hands each row to one
//! claimer. Migrations: sqlx's lock is a no-op on SQLite, so two processes opening one new file
//! can both try to apply the same migration; the loser's transaction fails and rolls back, and
//! it runs the migrator again as long as another process made progress meanwhile.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::MigrateError;

use crate::{Result, Tx};

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
    let write = if url == MEMORY_URL {
        read.clone()
    } else {
        connect(&url, 1).await?
    };
    Ok(Pools { read, write })
}

async fn connect(url: &str, connections: u32) -> Result<AnyPool, String> {
    AnyPoolOptions::new()
        .max_connections(connections)
        // A connection to a local file cannot go stale, and the ping before each checkout was
        // a round trip to the connection's worker thread in front of every statement.
        .test_before_acquire(false)
        .after_connect(|connection, _| {
            Box::pin(async move {
                sqlx::query("PRAGMA busy_timeout = 10000")
                    .execute(&mut *connection)
                    .await?;
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *connection)
                    .await?;
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

pub(crate) async fn next_watermark(tx: &mut Tx<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE watermark_sequence SET next_value = next_value + 1 WHERE id = 1 RETURNING next_value - 1",
    )
    .fetch_one(&mut **tx)
    .await?)
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
