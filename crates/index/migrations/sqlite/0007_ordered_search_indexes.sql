-- Search results are ordered newest first (updated_at DESC, then the UID): indexes in that order
-- let a paged search stop after `limit` rows instead of sorting every match. The modality index
-- leads with the value searched for (case-insensitively), so "series by Modality" is one range.
CREATE INDEX series_by_modality_updated ON series (lower(modality), updated_at DESC, series_uid);
CREATE INDEX studies_by_updated_uid ON studies (updated_at DESC, study_uid);
CREATE INDEX series_by_updated_uid ON series (updated_at DESC, series_uid);
DROP INDEX series_by_modality_lower;
DROP INDEX studies_by_updated;
DROP INDEX series_by_updated;
