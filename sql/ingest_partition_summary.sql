-- What one day holds after ingest: the numbers reported as asset metadata and checked.
SELECT
    (SELECT count(*) FROM events WHERE partition_day = $day) AS events,
    (SELECT count(DISTINCT user_id) FROM events WHERE partition_day = $day) AS users,
    (SELECT count(DISTINCT item_id) FROM events WHERE partition_day = $day) AS items,
    (SELECT count(*) FROM events WHERE partition_day = $day AND event_type = 'view') AS views,
    (SELECT count(*) FROM events WHERE partition_day = $day AND event_type = 'cart') AS carts,
    (SELECT count(*) FROM events WHERE partition_day = $day AND event_type = 'purchase') AS purchases,
    (SELECT count(*) FROM rejected_events WHERE partition_day = $day) AS rejected,
    (SELECT count(*) FROM events WHERE partition_day = $day AND CAST(ts AS DATE) <> partition_day) AS off_day;
