-- Stage a batch of a Parquet file registered as `arrow_batch` (columns line, user_raw, item_raw,
-- event_raw, ts_raw in their Parquet types): everything becomes text, like the other formats.
-- $user_kind / $item_kind: what an id column is when it is no integer or text ('a float', 'a struct',
-- from pipelines.event_ingest.id_kind), else NULL.
INSERT INTO staged_rows
SELECT line,
       CAST(user_raw AS VARCHAR),
       CAST(item_raw AS VARCHAR),
       CAST(event_raw AS VARCHAR),
       CAST(ts_raw AS VARCHAR),
       NULL,
       NULL,
       CAST($user_kind AS VARCHAR),
       CAST($item_kind AS VARCHAR)
FROM arrow_batch;
