//! Queries the blob migration walks the index with.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{
    CHANGE_FEED_SELECT, CREATED, ChangeAction, ChangeFeedEntry, InstanceIndex, Result,
    StoredInstance, change_feed_entry, micros, stored_instance,
};

const INSTANCE_SELECT: &str =
    "SELECT watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax,
    content_length, checksum, has_frame_ranges FROM instances";

impl InstanceIndex {
    /// Up to `limit` `Created` instances with a watermark below `before` (all when `None`),
    /// highest first: the copy and delete-old walk the store from the newest down.
    pub async fn instances_below(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredInstance>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = {CREATED} AND watermark < $1 ORDER BY watermark DESC LIMIT $2"
        )))
        .bind(before.map(|b| b as i64).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_instance).collect()
    }

    /// Up to `limit` `Created` instances above watermark `after` that a walk started at
    /// `started` (when `upper` was the highest watermark) did not see: stored later
    /// (watermark above `upper`), or completed later (`Creating` when the walk passed them).
    pub async fn instances_since(
        &self,
        after: u64,
        upper: u64,
        started: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StoredInstance>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = {CREATED} AND watermark > $1 AND (watermark > $2 OR updated_at >= $3)
             ORDER BY watermark LIMIT $4"
        )))
        .bind(after as i64)
        .bind(upper as i64)
        .bind(micros(started))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_instance).collect()
    }

    /// The `Created` instance with this watermark, if any.
    pub async fn instance_by_watermark(&self, watermark: u64) -> Result<Option<StoredInstance>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = {CREATED} AND watermark = $1"
        )))
        .bind(watermark as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_instance).transpose()
    }

    /// How many instances are `Created`.
    pub async fn count_created(&self) -> Result<u64> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM instances WHERE status = {CREATED}"
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// The highest watermark of a `Created` instance, if any.
    pub async fn max_created_watermark(&self) -> Result<Option<u64>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT MAX(watermark) FROM instances WHERE status = {CREATED}"
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.map(|w| w as u64))
    }

    /// Records the length and checksum of an instance's file where the index has none (an
    /// adopted instance, measured from its Old blob).
    pub async fn record_content(&self, watermark: u64, length: u64, checksum: &str) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET content_length = $1, checksum = $2 WHERE watermark = $3 AND (content_length IS NULL OR checksum IS NULL)",
        )
        .bind(length as i64)
        .bind(checksum.to_owned())
        .bind(watermark as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` delete rows of the change feed at or after `since` with a sequence above
    /// `after`, in sequence order (cleanup-deleted walks them).
    pub async fn deletes_since(
        &self,
        since: DateTime<Utc>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChangeFeedEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE action = $1 AND timestamp >= $2 AND sequence > $3 ORDER BY sequence LIMIT $4"
        )))
        .bind(ChangeAction::Delete as i16)
        .bind(micros(since))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_feed_entry).collect()
    }

    /// How many delete rows of the change feed are at or after `since`.
    pub async fn count_deletes_since(&self, since: DateTime<Utc>) -> Result<u64> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM change_feed WHERE action = $1 AND timestamp >= $2")
                .bind(ChangeAction::Delete as i16)
                .bind(micros(since))
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }
}
