-- Serving fold-in: recent events summed per (user, item) with the event-type weights of `interactions`,
-- newest $max_events per user. Read into memory on a short read-only connection by serving/fold_in.py.
-- Days before $since_day are skipped (the model's training window end); with no such day, the last
-- $lookback_days days that have events.
WITH bounds AS (
    SELECT coalesce(CAST($since_day AS DATE),
                    CAST(max(partition_day) - CAST($lookback_days AS INTEGER) + 1 AS DATE)) AS first_day
    FROM events
),
recent AS (
    SELECT user_id,
           item_id,
           event_type,
           row_number() OVER (PARTITION BY user_id ORDER BY ts DESC) AS newest_rank
    FROM events
    WHERE partition_day >= (SELECT first_day FROM bounds)
)
SELECT user_id,
       item_id,
       CAST(sum(CASE event_type
                    WHEN 'view' THEN $view_weight
                    WHEN 'cart' THEN $cart_weight
                    WHEN 'purchase' THEN $purchase_weight
                    ELSE 0
                END) AS DOUBLE) AS weight
FROM recent
WHERE newest_rank <= $max_events
GROUP BY user_id, item_id
ORDER BY user_id, item_id;
