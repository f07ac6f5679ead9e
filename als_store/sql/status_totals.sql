-- Whole-warehouse totals for `python -m pipelines status`.
SELECT (SELECT count(DISTINCT partition_day) FROM ingested_files) AS days,
       (SELECT count(*) FROM events)                              AS events,
       (SELECT count(*) FROM rejected_events)                     AS rejected,
       (SELECT min(partition_day) FROM ingested_files)            AS first_day,
       (SELECT max(partition_day) FROM ingested_files)            AS last_day;
