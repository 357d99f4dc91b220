-- QIDO: person names folded for case- and accent-insensitive matching, and indexes for the
-- common searches.
ALTER TABLE studies ADD COLUMN patient_name_folded TEXT;
ALTER TABLE studies ADD COLUMN patient_name_words TEXT;
ALTER TABLE studies ADD COLUMN referring_physician_name_folded TEXT;
ALTER TABLE studies ADD COLUMN referring_physician_name_words TEXT;
CREATE INDEX studies_by_patient_id ON studies (patient_id);
CREATE INDEX studies_by_accession_number ON studies (accession_number);
CREATE INDEX studies_by_study_date ON studies (study_date);
CREATE INDEX studies_by_updated ON studies (updated_at);
CREATE INDEX series_by_modality ON series (modality);
CREATE INDEX series_by_updated ON series (updated_at);
