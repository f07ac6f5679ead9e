-- Validate staged text rows of one file for partition $day: parse, normalise, and give every bad
-- row one reason (the first that applies, in this order). $raw_events / $canonical_events are the
-- mapping's event names (lower case) and what each means. Ids follow sql/ingest_id_rule.sql.
CREATE OR REPLACE TEMP TABLE classified AS
WITH parsed AS (
    SELECT line,
           raw,
           malformed,
           user_raw,
           item_raw,
           event_raw,
           ts_raw,
           nullif(trimmed_id(user_raw), '') AS user_id,
           nullif(trimmed_id(item_raw), '') AS item_id,
           CASE WHEN user_kind IS NOT NULL THEN kind_problem(user_kind, user_raw)
                ELSE id_problem(nullif(trimmed_id(user_raw), '')) END AS user_problem,
           CASE WHEN item_kind IS NOT NULL THEN kind_problem(item_kind, item_raw)
                ELSE id_problem(nullif(trimmed_id(item_raw), '')) END AS item_problem,
           $canonical_events[list_position($raw_events, lower(trim(event_raw)))] AS event_type,
           CASE $time_unit
               WHEN 'epoch_s' THEN TRY(make_timestamp(CAST(TRY_CAST(trim(ts_raw) AS DOUBLE) * 1e6 AS BIGINT)))
               WHEN 'epoch_ms' THEN TRY(make_timestamp(CAST(TRY_CAST(trim(ts_raw) AS DOUBLE) * 1e3 AS BIGINT)))
               WHEN 'format' THEN TRY_CAST(try_strptime(trim(ts_raw), $time_format) AS TIMESTAMP)
               -- an offset or zone name is honoured; none means UTC (the session's zone)
               ELSE TRY_CAST(TRY_CAST(trim(ts_raw) AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS TIMESTAMP)
           END AS ts
    FROM staged_rows
)
SELECT *,
       CASE
           WHEN malformed IS NOT NULL THEN 'malformed row'
           WHEN user_id IS NULL THEN 'missing user id'
           WHEN user_problem IS NOT NULL THEN 'bad user id'
           WHEN item_id IS NULL THEN 'missing item id'
           WHEN item_problem IS NOT NULL THEN 'bad item id'
           WHEN event_type IS NULL THEN 'unknown event type'
           WHEN ts IS NULL THEN 'bad timestamp'
           WHEN CAST(ts AS DATE) <> $day THEN 'outside partition'
       END AS reason,
       CASE
           WHEN malformed IS NOT NULL THEN malformed
           WHEN user_id IS NULL THEN NULL
           WHEN user_problem IS NOT NULL THEN 'user id ' || user_problem
           WHEN item_id IS NULL THEN NULL
           WHEN item_problem IS NOT NULL THEN 'item id ' || item_problem
           WHEN event_type IS NULL THEN 'event type ' || coalesce('''' || event_raw || '''', 'missing')
           WHEN ts IS NULL THEN 'timestamp ' || coalesce('''' || ts_raw || '''', 'missing')
           WHEN CAST(ts AS DATE) <> $day THEN 'event on ' || CAST(CAST(ts AS DATE) AS VARCHAR) || ', partition is ' || CAST($day AS VARCHAR)
       END AS detail
FROM parsed;
