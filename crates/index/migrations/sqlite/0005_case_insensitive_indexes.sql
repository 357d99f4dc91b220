-- Case-insensitive matching compares lower(column); these indexes serve it.
CREATE INDEX studies_by_patient_id_lower ON studies (lower(patient_id));
CREATE INDEX studies_by_accession_number_lower ON studies (lower(accession_number));
CREATE INDEX series_by_modality_lower ON series (lower(modality));
