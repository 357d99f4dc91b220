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

use crate::{Result, Tx};

/// How many times a migration that lost a race with another process is run again.
const MIGRATION_ATTEMPTS: u32 = 20;

/// Claims due removals (binds as in `Engine::claim_removals_sql`).
pub(crate) const CLAIM_REMOVALS: &str =
    "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = $5
     WHERE watermark IN (SELECT watermark FROM deleted_instances
         WHERE cleanup_after <= $2 AND retry_count <= $3 ORDER BY cleanup_after LIMIT $4)
       AND cleanup_after <= $2
     RETURNING watermark, study_uid, series_uid, sop_uid, retry_count";

/// Opens the file (creating it and its folder), sets WAL and brings the schema up to date.
pub(crate) async fn open(url: &str) -> Result<AnyPool, String> {
    let url = sqlite_url(url)?;
    let pool = AnyPoolOptions::new()
        .max_connections(4)
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
        .connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs the migrations, again when one failed because another process applied it first.
async fn migrate(pool: &AnyPool) -> Result<(), String> {
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let mut attempt = 1;
    loop {
        let before = applied_migrations(pool).await;
        let Err(error) = migrator.run(pool).await else {
            return Ok(());
        };
        // A failure while another process applied migrations is that race (a table that
        // "already exists", a busy database); one with no progress elsewhere is ours.
        if applied_migrations(pool).await <= before || attempt >= MIGRATION_ATTEMPTS {
            return Err(error.to_string());
        }
        tracing::debug!(attempt, %error, "another process migrated the index meanwhile; again");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
