-- The canonical event of each distinct raw event name of a typed Parquet batch ($names), matched as
-- ingest_classify.sql does (lower case, trimmed); NULL for a name the mapping does not list.
SELECT name, $canonical_events[list_position($raw_events, lower(trim(name)))] AS event_type
FROM unnest($names) AS t(name);
