-- Processes serving from this index, so that a reservation (a Creating row) can be told dead
-- or alive: each process registers here and renews its lease while it runs; a graceful shutdown
-- unregisters it. A Creating row whose owner is unregistered or whose lease expired is dead and
-- may be taken over at once. Processes that share a local_key (same kernel boot and pid
-- namespace) check each other's pid and start time directly.
CREATE TABLE processes (
    owner_id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    local_key TEXT,
    pid BIGINT NOT NULL,
    start_ticks BIGINT,
    started_at BIGINT NOT NULL,
    lease_expires BIGINT NOT NULL
);

-- The process that reserved a Creating row (NULL: reserved before owners were recorded, or by
-- a process that did not register; such rows are swept by age only).
ALTER TABLE instances ADD COLUMN owner_id TEXT;
CREATE INDEX instances_by_owner ON instances (owner_id, status);

-- The process that claimed a queued blob removal: when it is gone, its claims are released at
-- once instead of when the claim's lease ends.
ALTER TABLE deleted_instances ADD COLUMN claimed_by TEXT;
