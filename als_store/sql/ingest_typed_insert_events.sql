-- Good rows of the registered typed batch straight into events (see ingest_typed_rows.sql). One
-- scan in line order, and DuckDB keeps insertion order: the rows are stored by line, no sort needed.
INSERT INTO events (user_id, item_id, event_type, ts, partition_day, source_file, source_line)
SELECT user_id, item_id, event_type, ts, $day, $source_file, line
FROM typed_rows($day)
WHERE reason IS NULL;
