-- Durable background operations (contract §6): one row per fixed operation id, with a lease so
-- that exactly one process runs it, and a checkpoint to resume from.
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

CREATE INDEX instances_by_updated ON instances (status, updated_at);
CREATE INDEX change_feed_by_action ON change_feed (action, sequence);
