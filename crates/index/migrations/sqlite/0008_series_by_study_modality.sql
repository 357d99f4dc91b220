-- "Studies by ModalitiesInStudy" asks, study by study in result order, whether the study has a
-- series of a modality: this index answers it with one seek. Without it, SQLite (no statistics)
-- picks series_by_modality_updated and reads every series of that modality for each study.
CREATE INDEX series_by_study_modality ON series (study_uid, lower(modality));
