-- Searches match PatientID, AccessionNumber and Modality case-insensitively, through the indexes
-- on lower(...) (0005, 0007, 0008); these on the plain columns served no query, yet every store
-- rewrote their entries (its study and series rows are upserted), which cost WAL pages each time.
DROP INDEX studies_by_patient_id;
DROP INDEX studies_by_accession_number;
DROP INDEX series_by_modality;
