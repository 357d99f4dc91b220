//! Recording instances found in a blob store the original server wrote (`tessera adopt`).

use chrono::Utc;
use sqlx::Row;
use tessera_core::Watermark;

use crate::{CREATED, ChangeAction, InstanceIndex, NewInstance, Result, micros, upsert_parents};

/// What recording a found instance did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// It is now a `Created` instance.
    Adopted,
    /// Its watermark was recorded already (an earlier run, or its other name).
    AlreadyIndexed,
    /// It replaced the same SOP instance under this lower watermark, which is now a leftover.
    Replaced(Watermark),
    /// The same SOP instance is recorded under a higher watermark: this one is a leftover.
    Leftover(Watermark),
}

/// An instance found in the blob store, as a store would have recorded it.
#[derive(Clone, Debug)]
pub struct FoundInstance {
    /// UIDs, transfer syntax, searchable attributes.
    pub instance: NewInstance,
    /// The watermark in its blob name, kept as found.
    pub watermark: Watermark,
    /// Length of its file.
    pub content_length: u64,
    /// Checksum of its file.
    pub checksum: String,
    /// Whether a frame-range blob exists for it.
    pub has_frame_ranges: bool,
}

impl InstanceIndex {
    /// Records a found instance as `Created` (with its change-feed row), keeping the highest
    /// watermark of a SOP instance found several times, and keeps the watermark sequence above
    /// every watermark found.
    pub async fn adopt(&self, found: &FoundInstance) -> Result<Adoption> {
        let now = micros(Utc::now());
        let w = found.watermark.get() as i64;
        let mut tx = self.pool.begin().await?;
        // The write comes first (SQLite write lock); the sequence continues above what was found.
        sqlx::query("UPDATE watermark_sequence SET next_value = CASE WHEN next_value > $1 THEN next_value ELSE $1 END WHERE id = 1")
            .bind(w + 1)
            .execute(&mut *tx)
            .await?;
        let known = sqlx::query("SELECT 1 FROM instances WHERE watermark = $1")
            .bind(w)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_some() {
            tx.commit().await?;
            return Ok(Adoption::AlreadyIndexed);
        }
        let id = &found.instance.id;
        let existing = sqlx::query("SELECT watermark FROM instances WHERE study_uid = $1 AND series_uid = $2 AND sop_uid = $3")
            .bind(id.study.as_str())
            .bind(id.series.as_str())
            .bind(id.sop.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let mut outcome = Adoption::Adopted;
        if let Some(row) = existing {
            let other: i64 = row.try_get(0)?;
            let other_watermark = Watermark::new(other as u64)
                .map_err(|e| crate::IndexError::Corrupt(e.to_string()))?;
            if other > w {
                tx.commit().await?;
                return Ok(Adoption::Leftover(other_watermark));
            }
            sqlx::query("DELETE FROM instances WHERE watermark = $1")
                .bind(other)
                .execute(&mut *tx)
                .await?;
            outcome = Adoption::Replaced(other_watermark);
        }
        upsert_parents(&mut tx, &found.instance, now).await?;
        sqlx::query(
            "INSERT INTO instances (watermark, study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax, status,
                 created_at, updated_at, content_length, checksum, has_frame_ranges)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11)",
        )
        .bind(w)
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(id.sop.as_str())
        .bind(found.instance.attributes.sop_class_uid.clone())
        .bind(found.instance.transfer_syntax.clone())
        .bind(CREATED)
        .bind(now)
        .bind(found.content_length as i64)
        .bind(found.checksum.clone())
        .bind(i16::from(found.has_frame_ranges))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO change_feed (timestamp, action, study_uid, series_uid, sop_uid, original_watermark, current_watermark)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(now)
        .bind(ChangeAction::Create as i16)
        .bind(id.study.as_str())
        .bind(id.series.as_str())
        .bind(id.sop.as_str())
        .bind(w)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE change_feed SET current_watermark = $1 WHERE study_uid = $2 AND series_uid = $3 AND sop_uid = $4")
            .bind(w)
            .bind(id.study.as_str())
            .bind(id.series.as_str())
            .bind(id.sop.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
