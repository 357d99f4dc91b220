-- Native (uncompressed) pixel data: frame i lies at native_frame_offset + i * native_frame_length.
-- Recorded here at reservation instead of in a frame-range blob, so a store writes one blob
-- fewer; NULL for encapsulated pixel data, no pixel data, and rows from before this column.
ALTER TABLE instances ADD COLUMN native_frame_offset BIGINT;
ALTER TABLE instances ADD COLUMN native_frame_length BIGINT;
ALTER TABLE instances ADD COLUMN native_frame_count BIGINT;
