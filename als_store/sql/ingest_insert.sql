-- Move one classified file into the warehouse: good rows to events, bad ones to rejected_events.
INSERT INTO events (user_id, item_id, event_type, ts, partition_day, source_file, source_line)
SELECT user_id, item_id, event_type, ts, $day, $source_file, line
FROM classified
WHERE reason IS NULL
ORDER BY line;

INSERT INTO rejected_events (partition_day, source_file, source_line, reason, detail, raw)
SELECT $day, $source_file, line, reason, detail,
       coalesce(raw, CAST(json_object('user', user_raw, 'item', item_raw, 'event', event_raw, 'ts', ts_raw) AS VARCHAR))
FROM classified
WHERE reason IS NOT NULL
ORDER BY line;

SELECT count(*) FILTER (WHERE reason IS NULL) AS loaded,
       count(*) FILTER (WHERE reason IS NOT NULL) AS rejected
FROM classified;
