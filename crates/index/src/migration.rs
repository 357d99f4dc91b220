//! Queries the blob migration walks the index with.

use chrono::{DateTime, Utc};

use crate::rows::{ChangeFeedRow, InstanceRow, unsigned};
use crate::{
    CHANGE_FEED_SELECT, CREATED, ChangeAction, ChangeFeedEntry, INSTANCE_SELECT, InstanceIndex,
    Result, StoredInstance, micros,
};

impl InstanceIndex {
    /// Up to `limit` `Created` instances with a watermark below `before` (all when `None`),
    /// highest first: the copy and delete-old walk the store from the newest down.
    pub async fn instances_below(
        &self,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredInstance>> {
        let rows: Vec<InstanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = $1 AND watermark < $2 ORDER BY watermark DESC LIMIT $3"
        )))
        .bind(CREATED)
        .bind(before.map(crate::rows::to_db).transpose()?.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(InstanceRow::into_stored).collect()
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
        let rows: Vec<InstanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = $1 AND watermark > $2 AND (watermark > $3 OR updated_at >= $4)
             ORDER BY watermark LIMIT $5"
        )))
        .bind(CREATED)
        .bind(crate::rows::to_db(after)?)
        .bind(crate::rows::to_db(upper)?)
        .bind(micros(started))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(InstanceRow::into_stored).collect()
    }

    /// The `Created` instance with this watermark, if any.
    pub async fn instance_by_watermark(&self, watermark: u64) -> Result<Option<StoredInstance>> {
        let row: Option<InstanceRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{INSTANCE_SELECT} WHERE status = $1 AND watermark = $2"
        )))
        .bind(CREATED)
        .bind(crate::rows::to_db(watermark)?)
        .fetch_optional(&self.pool)
        .await?;
        row.map(InstanceRow::into_stored).transpose()
    }

    /// How many instances are `Created`.
    pub async fn count_created(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE status = $1")
            .bind(CREATED)
            .fetch_one(&self.pool)
            .await?;
        unsigned(count, "count")
    }

    /// The highest watermark of a `Created` instance, if any.
    pub async fn max_created_watermark(&self) -> Result<Option<u64>> {
        let max: Option<i64> =
            sqlx::query_scalar("SELECT MAX(watermark) FROM instances WHERE status = $1")
                .bind(CREATED)
                .fetch_one(&self.pool)
                .await?;
        max.map(|w| unsigned(w, "watermark")).transpose()
    }

    /// Records the length and checksum of an instance's file where the index has none (an
    /// adopted instance, measured from its Old blob).
    pub async fn record_content(&self, watermark: u64, length: u64, checksum: &str) -> Result<()> {
        sqlx::query(
            "UPDATE instances SET content_length = $1, checksum = $2 WHERE watermark = $3 AND (content_length IS NULL OR checksum IS NULL)",
        )
        .bind(crate::rows::to_db(length)?)
        .bind(checksum.to_owned())
        .bind(crate::rows::to_db(watermark)?)
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
        let rows: Vec<ChangeFeedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{CHANGE_FEED_SELECT} WHERE action = $1 AND timestamp >= $2 AND sequence > $3 ORDER BY sequence LIMIT $4"
        )))
        .bind(ChangeAction::Delete as i16)
        .bind(micros(since))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ChangeFeedRow::into_entry).collect()
    }

    /// How many delete rows of the change feed are at or after `since`.
    pub async fn count_deletes_since(&self, since: DateTime<Utc>) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM change_feed WHERE action = $1 AND timestamp >= $2",
        )
        .bind(ChangeAction::Delete as i16)
        .bind(micros(since))
        .fetch_one(&self.pool)
        .await?;
        unsigned(count, "count")
    }
}
