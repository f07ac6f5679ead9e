-- The last ingest of each `events` day, newest day first, for `python -m pipelines status`.
-- An ingest replaces the whole day (ingested_files, events, rejected_events), so the rows
-- present are exactly those of the day's last ingest.
WITH files AS (
    SELECT partition_day,
           max(ingested_at)                   AS ingested_at,
           count(*)                           AS files,
           count(duplicate_of)                AS duplicate_files,
           sum(rows_loaded)                   AS rows_loaded,
           sum(rows_rejected)                 AS rows_rejected
    FROM ingested_files
    GROUP BY partition_day
),
reasons AS (
    SELECT partition_day,
           string_agg(reason || ': ' || n, ', ' ORDER BY n DESC, reason) AS rejected_reasons
    FROM (SELECT partition_day, reason, count(*) AS n FROM rejected_events GROUP BY ALL)
    GROUP BY partition_day
)
SELECT files.partition_day, files.ingested_at, files.files, files.duplicate_files,
       files.rows_loaded, files.rows_rejected, coalesce(reasons.rejected_reasons, '') AS rejected_reasons
FROM files
LEFT JOIN reasons USING (partition_day)
ORDER BY files.partition_day DESC
LIMIT $limit;
