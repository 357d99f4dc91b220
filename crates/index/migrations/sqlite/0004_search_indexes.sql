-- Per-study and per-series lookups of visible instances (counts, newest instance), preferred by
-- the planner over the status-only indexes.
CREATE INDEX instances_by_study ON instances (study_uid, status, watermark);
CREATE INDEX instances_by_series ON instances (study_uid, series_uid, status, watermark);
