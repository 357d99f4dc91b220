-- A store's reservation inserts its row into every index of `instances`, and its completion
-- moves it in each that holds the status: these three cost WAL pages in both commits. None is
-- needed: `updated_at` is never searched, and the reads of `Creating` rows (stale reservations,
-- a process's reservations) find them, few as they are, through instances_by_status_watermark.
DROP INDEX instances_by_status;
DROP INDEX instances_by_updated;
DROP INDEX instances_by_owner;
