//! The PostgreSQL engine: several processes on one database.
//!
//! Watermarks come from the `watermark_sequence` SEQUENCE, so concurrent stores never wait on
//! one row (gaps are fine, a value is never handed out twice). Raising the sequence above the
//! watermarks of adopted blobs (`setval`) is not atomic with a concurrent `nextval`, so every
//! reservation holds a shared advisory lock while it draws its value and a raise holds the
//! exclusive one. Work queues are claimed with `FOR UPDATE SKIP LOCKED`, so two processes never
//! take the same row and never wait for each other. Change-feed appends are serialized from the
//! append to the commit, so sequence order is commit order. Migrations run under sqlx's
//! advisory lock.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection};

use crate::{Result, Tx};

/// The advisory lock that orders watermark raises after reservations in flight ("tessera" in
/// ASCII followed by 1; sqlx's migration lock is derived from the database name).
const WATERMARK_LOCK: i64 = 0x7465_7373_6572_6101;

/// The advisory lock that makes change-feed sequences follow commit order ("tessera" and 2).
const CHANGE_FEED_LOCK: i64 = 0x7465_7373_6572_6102;

/// Claims due removals (binds as in `Engine::claim_removals_sql`).
pub(crate) const CLAIM_REMOVALS: &str =
    "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = $5
     WHERE watermark IN (SELECT watermark FROM deleted_instances
         WHERE cleanup_after <= $2 AND retry_count <= $3 ORDER BY cleanup_after LIMIT $4
         FOR UPDATE SKIP LOCKED)
     RETURNING watermark, study_uid, series_uid, sop_uid, retry_count";

/// Connects and brings the schema up to date (under sqlx's advisory lock, so processes
/// starting together apply each migration once).
pub(crate) async fn open(url: &str) -> Result<AnyPool, String> {
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let mut connection = pool.acquire().await.map_err(|e| e.to_string())?;
    let migrated = sqlx::migrate!("./migrations/postgres")
        .run_direct(None, &mut *connection, false)
        .await;
    if let Err(error) = migrated {
        // The migrator keeps its session lock when it fails; the connection must not go back
        // to the pool holding it.
        let _ = connection.detach().close().await;
        return Err(error.to_string());
    }
    Ok(pool)
}

pub(crate) async fn next_watermark(tx: &mut Tx<'_>) -> Result<i64> {
    sqlx::query("SELECT 1 FROM pg_advisory_xact_lock_shared($1)")
        .bind(WATERMARK_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(sqlx::query_scalar("SELECT nextval('watermark_sequence')")
        .fetch_one(&mut **tx)
        .await?)
}

pub(crate) async fn raise_watermarks_above(tx: &mut Tx<'_>, watermark: i64) -> Result<()> {
    // The sequence only grows, so a value above `watermark` now stays above it.
    let next: i64 = sqlx::query_scalar(PEEK).fetch_one(&mut **tx).await?;
    if next > watermark {
        return Ok(());
    }
    sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
        .bind(WATERMARK_LOCK)
        .execute(&mut **tx)
        .await?;
    // `setval(…, v)` makes the next value v + 1.
    let _: i64 = sqlx::query_scalar(
        "SELECT setval('watermark_sequence', GREATEST(last_value, $1)) FROM watermark_sequence",
    )
    .bind(watermark)
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// Taken before a transaction appends to the change feed and held until it commits: an
/// identity value is drawn at insert but visible at commit, so without it a reader paging by
/// sequence could pass a row that commits later under a lower number, and never see it.
pub(crate) async fn lock_change_feed(tx: &mut Tx<'_>) -> Result<()> {
    sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
        .bind(CHANGE_FEED_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const PEEK: &str =
    "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM watermark_sequence";

pub(crate) async fn peek_next_watermark(pool: &AnyPool) -> Result<i64> {
    Ok(sqlx::query_scalar(PEEK).fetch_one(pool).await?)
}
