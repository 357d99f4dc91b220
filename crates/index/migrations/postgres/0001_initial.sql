-- The whole schema of the SQLite migrations 0001-0006, for PostgreSQL. Times are microseconds
-- since the Unix epoch (BIGINT) and flags SMALLINT, as on SQLite, so both engines share their
-- queries.

-- Watermarks: a sequence, so concurrent reservations never wait on one row. Gaps (a rolled-back
-- reservation) are fine; a value is never handed out twice (orig A.2).
CREATE SEQUENCE watermark_sequence AS BIGINT START WITH 1 MINVALUE 1;

-- Study and series attributes: the latest stored instance wins (orig A.5). Person names are
-- also kept folded for case- and accent-insensitive matching.
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT,
    patient_name TEXT,
    patient_birth_date TEXT,
    accession_number TEXT,
    referring_physician_name TEXT,
    study_date TEXT,
    study_description TEXT,
    updated_at BIGINT NOT NULL,
    patient_name_folded TEXT,
    patient_name_words TEXT,
    referring_physician_name_folded TEXT,
    referring_physician_name_words TEXT
);
CREATE INDEX studies_by_patient_id ON studies (patient_id);
CREATE INDEX studies_by_accession_number ON studies (accession_number);
CREATE INDEX studies_by_study_date ON studies (study_date);
CREATE INDEX studies_by_updated ON studies (updated_at);
CREATE INDEX studies_by_patient_id_lower ON studies (lower(patient_id));
CREATE INDEX studies_by_accession_number_lower ON studies (lower(accession_number));

CREATE TABLE series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    performed_procedure_step_start_date TEXT,
    manufacturer_model_name TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (study_uid, series_uid)
);
CREATE INDEX series_by_modality ON series (modality);
CREATE INDEX series_by_updated ON series (updated_at);
CREATE INDEX series_by_modality_lower ON series (lower(modality));

-- status: 0 = Creating (reserved, blobs being written), 1 = Created (visible). owner_id: the
-- process that reserved a Creating row (NULL: one that did not register).
CREATE TABLE instances (
    watermark BIGINT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    status SMALLINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    content_length BIGINT,
    checksum TEXT,
    has_frame_ranges SMALLINT NOT NULL DEFAULT 0,
    owner_id TEXT,
    UNIQUE (study_uid, series_uid, sop_uid)
);
CREATE INDEX instances_by_status ON instances (status, created_at);
CREATE INDEX instances_by_updated ON instances (status, updated_at);
CREATE INDEX instances_by_study ON instances (study_uid, status, watermark);
CREATE INDEX instances_by_series ON instances (study_uid, series_uid, status, watermark);
CREATE INDEX instances_by_owner ON instances (owner_id, status);

CREATE TABLE change_feed (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp BIGINT NOT NULL,
    action SMALLINT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    original_watermark BIGINT NOT NULL,
    current_watermark BIGINT
);
CREATE INDEX change_feed_by_time ON change_feed (timestamp, sequence);
CREATE INDEX change_feed_by_instance ON change_feed (study_uid, series_uid, sop_uid);
CREATE INDEX change_feed_by_action ON change_feed (action, sequence);

-- Blobs waiting for removal after a delete (or a failed store); claimed_by: the process whose
-- claim is in force, released at once when it is gone.
CREATE TABLE deleted_instances (
    watermark BIGINT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    cleanup_after BIGINT NOT NULL,
    retry_count BIGINT NOT NULL DEFAULT 0,
    claimed_by TEXT
);
CREATE INDEX deleted_instances_due ON deleted_instances (cleanup_after);

-- Durable background operations: one row per fixed operation id, with a lease so that exactly
-- one process runs it, and a checkpoint to resume from.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    results TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires BIGINT
);

-- Instances an operation could not process; retried (only they) when the operation resumes.
CREATE TABLE operation_failures (
    operation_id TEXT NOT NULL,
    watermark BIGINT NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (operation_id, watermark)
);

-- Processes serving from this index (see the SQLite migration 0006).
CREATE TABLE processes (
    owner_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    local_key TEXT,
    pid BIGINT NOT NULL,
    start_ticks BIGINT,
    started_at BIGINT NOT NULL,
    lease_expires BIGINT NOT NULL
);
