-- One day of events: how many, and how many break the rules the ingest promises.
SELECT count(*) AS events,
       count(*) FILTER (WHERE user_id IS NULL OR trim(user_id) = '' OR item_id IS NULL OR trim(item_id) = '') AS missing_ids,
       count(*) FILTER (WHERE event_type NOT IN ('view', 'cart', 'purchase') OR event_type IS NULL) AS bad_event_types,
       count(*) FILTER (WHERE ts IS NULL OR CAST(ts AS DATE) <> partition_day) AS off_day,
       (SELECT count(*) FROM rejected_events WHERE partition_day = $day) AS rejected
FROM events
WHERE partition_day = $day;
