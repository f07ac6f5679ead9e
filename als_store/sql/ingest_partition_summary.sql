-- What one day holds after ingest: the numbers reported as asset metadata and checked. One scan of
-- the day's events (zone maps on partition_day skip the other days), filtered counts per type.
SELECT count(*) AS events,
       count(DISTINCT user_id) AS users,
       count(DISTINCT item_id) AS items,
       count(*) FILTER (WHERE event_type = 'view') AS views,
       count(*) FILTER (WHERE event_type = 'cart') AS carts,
       count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
       (SELECT count(*) FROM rejected_events WHERE partition_day = $day) AS rejected,
       count(*) FILTER (WHERE CAST(ts AS DATE) <> partition_day) AS off_day
FROM events
WHERE partition_day = $day;
