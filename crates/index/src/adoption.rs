//! Recording instances found in a blob store the original server wrote (`tessera adopt`).

use chrono::Utc;
use tessera_core::Watermark;

use crate::rows::{self, UidsRow};
use crate::{
    CREATED, ChangeAction, IndexError, InstanceIndex, NewInstance, Result, append_change,
    db_watermark, lock_study, micros, upsert_parents,
};

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
        let w = db_watermark(found.watermark);
        let length = i64::try_from(found.content_length)
            .map_err(|_| IndexError::Corrupt(format!("content length {}", found.content_length)))?;
        let mut tx = self.begin().await?;
        // The write comes first (SQLite write lock); the sequence continues above what was found.
        self.engine.raise_watermarks_above(&mut tx, w).await?;
        let id = &found.instance.id;
        let uids = UidsRow {
            study_uid: id.study.to_string(),
            series_uid: id.series.to_string(),
            sop_uid: id.sop.to_string(),
        };
        // The study first, as every transaction that adds or removes its instances does.
        lock_study(&mut tx, &uids.study_uid).await?;
        let known: Option<i64> =
            sqlx::query_scalar("SELECT watermark FROM instances WHERE watermark = $1")
                .bind(w)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_some() {
            tx.commit().await?;
            return Ok(Adoption::AlreadyIndexed);
        }
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT watermark FROM instances WHERE study_uid = $1 AND series_uid = $2 AND sop_uid = $3",
        )
        .bind(uids.study_uid.clone())
        .bind(uids.series_uid.clone())
        .bind(uids.sop_uid.clone())
        .fetch_optional(&mut *tx)
        .await?;
        let mut outcome = Adoption::Adopted;
        if let Some(other) = existing {
            let other_watermark = rows::watermark(other)?;
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
        .bind(uids.study_uid.clone())
        .bind(uids.series_uid.clone())
        .bind(uids.sop_uid.clone())
        .bind(found.instance.attributes.sop_class_uid.clone())
        .bind(found.instance.transfer_syntax.clone())
        .bind(CREATED)
        .bind(now)
        .bind(length)
        .bind(found.checksum.clone())
        .bind(i16::from(found.has_frame_ranges))
        .execute(&mut *tx)
        .await?;
        append_change(self.engine, &mut tx, now, ChangeAction::Create, &uids, w).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
