-- Watermarks come from one row, bumped in the transaction that reserves an instance, so a
-- watermark is never handed out twice, even after deletes (orig A.2).
CREATE TABLE watermark_sequence (
    id INTEGER PRIMARY KEY,
    next_value BIGINT NOT NULL
);
INSERT INTO watermark_sequence (id, next_value) VALUES (1, 1);

-- Study and series attributes: the latest stored instance wins (orig A.5).
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT,
    patient_name TEXT,
    patient_birth_date TEXT,
    accession_number TEXT,
    referring_physician_name TEXT,
    study_date TEXT,
    study_description TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE series (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT,
    performed_procedure_step_start_date TEXT,
    manufacturer_model_name TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (study_uid, series_uid)
);

-- status: 0 = Creating (reserved, blobs being written), 1 = Created (visible).
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
    UNIQUE (study_uid, series_uid, sop_uid)
);
CREATE INDEX instances_by_status ON instances (status, created_at);

CREATE TABLE change_feed (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
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

-- Blobs waiting for removal after a delete (or a failed store).
CREATE TABLE deleted_instances (
    watermark BIGINT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    cleanup_after BIGINT NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX deleted_instances_due ON deleted_instances (cleanup_after);
