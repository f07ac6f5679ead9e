-- Bad rows of the registered typed batch into rejected_events, with the detail and raw text that
-- ingest_classify.sql / ingest_insert.sql give (the mapped fields as text, in a JSON object).
INSERT INTO rejected_events (partition_day, source_file, source_line, reason, detail, raw)
SELECT $day,
       $source_file,
       line,
       reason,
       CASE
           WHEN reason IN ('missing user id', 'missing item id') THEN NULL
           WHEN reason = 'bad user id' THEN 'user id ' || user_problem
           WHEN reason = 'bad item id' THEN 'item id ' || item_problem
           WHEN event_type IS NULL THEN 'event type ' || coalesce('''' || event_raw || '''', 'missing')
           WHEN ts IS NULL THEN 'timestamp ' || coalesce('''' || CAST(ts_raw AS VARCHAR) || '''', 'missing')
           ELSE 'event on ' || CAST(CAST(ts AS DATE) AS VARCHAR) || ', partition is ' || CAST($day AS VARCHAR)
       END,
       CAST(json_object('user', CAST(user_raw AS VARCHAR), 'item', CAST(item_raw AS VARCHAR),
                        'event', event_raw, 'ts', CAST(ts_raw AS VARCHAR)) AS VARCHAR)
FROM typed_rows($day)
WHERE reason IS NOT NULL;
