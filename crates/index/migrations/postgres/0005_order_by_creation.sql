-- Studies and series are listed newest first by when their row was created (their first stored
-- instance), as the original lists them (by StudyKey and SeriesKey); a store no longer sets
-- their time, so it moves neither row in these indexes. Existing rows keep the time they have
-- (their last store) as their creation time.
ALTER TABLE studies RENAME COLUMN updated_at TO created_at;
ALTER TABLE series RENAME COLUMN updated_at TO created_at;
ALTER INDEX studies_by_updated_uid RENAME TO studies_by_created_uid;
ALTER INDEX series_by_updated_uid RENAME TO series_by_created_uid;
ALTER INDEX series_by_modality_updated RENAME TO series_by_modality_created;
