-- No query reads instances by updated_at, and every store moved its row in this index twice.
DROP INDEX instances_by_updated;
