-- Studies and series are listed newest first by when their row was created (their first stored
-- instance), as the original lists them (by StudyKey and SeriesKey, keys drawn when the row is
-- created). Before, every store set its study's and series' time, which moved both rows in
-- each of these indexes: pages of four indexes written to the log by a store that changed no
-- attribute. Existing rows keep the time they have (their last store) as their creation time.
ALTER TABLE studies RENAME COLUMN updated_at TO created_at;
ALTER TABLE series RENAME COLUMN updated_at TO created_at;
DROP INDEX studies_by_updated_uid;
DROP INDEX series_by_updated_uid;
DROP INDEX series_by_modality_updated;
DROP INDEX studies_by_study_date_updated;
CREATE INDEX studies_by_created_uid ON studies (created_at DESC, study_uid);
CREATE INDEX series_by_created_uid ON series (created_at DESC, series_uid);
CREATE INDEX series_by_modality_created ON series (lower(modality), created_at DESC, series_uid);
CREATE INDEX studies_by_study_date_created ON studies (study_date, created_at DESC, study_uid);
