-- Stage a batch of a Parquet file registered as `arrow_batch` (columns line, user_raw, item_raw,
-- event_raw, ts_raw in their Parquet types): everything becomes text, like the other formats.
INSERT INTO staged_rows
SELECT line,
       CAST(user_raw AS VARCHAR),
       CAST(item_raw AS VARCHAR),
       CAST(event_raw AS VARCHAR),
       CAST(ts_raw AS VARCHAR),
       NULL,
       NULL
FROM arrow_batch;
