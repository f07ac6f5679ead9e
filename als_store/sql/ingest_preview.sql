SELECT user_id, item_id, event_type, ts, source_file, source_line
FROM events
WHERE partition_day = $day
ORDER BY ts, source_file, source_line
LIMIT $n;
