-- Validate a typed Parquet batch registered as `typed_batch`, with the rules and reasons of
-- ingest_classify.sql in the same order, but without a text copy of the file. Columns: line;
-- user_raw, item_raw, event_raw, ts_raw as the file has them; event_type, the canonical event of
-- event_raw (ingest_typed_event_names.sql maps each distinct name once) or NULL; ts, the time as UTC
-- TIMESTAMP or NULL (pipelines.event_ingest._utc_timestamps). Ids become their text, trimmed:
-- typeof() is constant per column, so DuckDB folds the CASE and integer ids skip the trim and the
-- text rule of sql/ingest_id_rule.sql (an integer is an id).
-- A table macro, so that the events and rejects inserts share it.
CREATE OR REPLACE TEMP MACRO typed_rows(day) AS TABLE
SELECT *,
       CASE
           WHEN user_id IS NULL OR user_id = '' THEN 'missing user id'
           WHEN user_problem IS NOT NULL THEN 'bad user id'
           WHEN item_id IS NULL OR item_id = '' THEN 'missing item id'
           WHEN item_problem IS NOT NULL THEN 'bad item id'
           WHEN event_type IS NULL THEN 'unknown event type'
           WHEN ts IS NULL THEN 'bad timestamp'
           WHEN CAST(ts AS DATE) <> day THEN 'outside partition'
       END AS reason
FROM (
    SELECT *,
           CASE WHEN typeof(user_raw) = 'VARCHAR' THEN id_problem(nullif(user_id, '')) END AS user_problem,
           CASE WHEN typeof(item_raw) = 'VARCHAR' THEN id_problem(nullif(item_id, '')) END AS item_problem
    FROM (
        SELECT line,
               user_raw,
               item_raw,
               event_raw,
               ts_raw,
               CASE WHEN typeof(user_raw) = 'VARCHAR' THEN trimmed_id(CAST(user_raw AS VARCHAR))
                    ELSE CAST(user_raw AS VARCHAR) END AS user_id,
               CASE WHEN typeof(item_raw) = 'VARCHAR' THEN trimmed_id(CAST(item_raw AS VARCHAR))
                    ELSE CAST(item_raw AS VARCHAR) END AS item_id,
               CAST(event_type AS VARCHAR) AS event_type,
               ts
        FROM typed_batch
    )
);
