-- Serving fold-in: the recent events of each user, newest $max_events per user, weighted exactly as training
-- weighs them (the weighted_events macro of sql/weighted_events.sql, with the served model's weighting) and
-- summed per (user, item); pairs that sum to 0 are left out, as sql/interactions.sql leaves them out. Read
-- into memory on a short read-only connection by serving/fold_in.py.
-- The window read: from $since_day (the model's training window end) or, with no such day, the last
-- $lookback_days days that have events, to the last day with events. As in training, a half-life counts an
-- event's age from the end of the window's last day.
WITH bounds AS (
    SELECT coalesce(CAST($since_day AS DATE),
                    CAST(max(partition_day) - CAST($lookback_days AS INTEGER) + 1 AS DATE)) AS first_day,
           max(partition_day) AS last_day
    FROM events
),
recent AS (
    SELECT user_id,
           item_id,
           weight,
           row_number() OVER (PARTITION BY user_id ORDER BY ts DESC) AS newest_rank
    FROM weighted_events((SELECT first_day FROM bounds), (SELECT last_day FROM bounds),
                         $view_weight, $cart_weight, $purchase_weight, $half_life_days)
)
SELECT user_id,
       item_id,
       CAST(sum(weight) AS DOUBLE) AS weight
FROM recent
WHERE newest_rank <= $max_events
GROUP BY user_id, item_id
HAVING sum(weight) > 0
ORDER BY user_id, item_id;
