-- "Studies by ModalitiesInStudy" asks, study by study in result order, whether the study has a
-- series of a modality: this index answers it with one seek. Without it, SQLite (no statistics)
-- picks series_by_modality_updated and reads every series of that modality for each study.
CREATE INDEX series_by_study_modality ON series (study_uid, lower(modality));
-- A StudyDate search sorts the keys of its matches (study_date, then result order): this index
-- holds them all, so the sort reads no table rows. It supersedes the index on study_date alone.
CREATE INDEX studies_by_study_date_updated ON studies (study_date, updated_at DESC, study_uid);
DROP INDEX studies_by_study_date;
-- Instance searches are ordered by watermark (newest first) among `Created` rows: walking this
-- index, a page stops after its rows instead of sorting every instance.
CREATE INDEX instances_by_status_watermark ON instances (status, watermark);
