-- r_ui: the summed event weights of each (user, item) over the window, rebuilt whole.
-- first_ts is kept beside the required columns: it shows when a pair was first seen.
-- weight_before_last_day is what the temporal split trains on (sql/training_temporal_pairs.sql), so
-- that training_data reads these pairs instead of aggregating the events a second time.
CREATE OR REPLACE TABLE interactions AS
SELECT user_id,
       item_id,
       CAST(sum(weight) AS DOUBLE) AS weight,
       max(ts) AS last_ts,
       count(*) AS n_events,
       min(ts) AS first_ts,
       CAST(coalesce(sum(weight) FILTER (WHERE ts < CAST($end_day AS TIMESTAMP)), 0) AS DOUBLE) AS weight_before_last_day
FROM weighted_events($start_day, $end_day, $view_weight, $cart_weight, $purchase_weight, $half_life_days)
GROUP BY user_id, item_id
HAVING sum(weight) > 0;

-- what the table was built from, for the training split and for people reading it
CREATE OR REPLACE TABLE interactions_window AS
SELECT CAST($start_day AS DATE) AS start_day,
       CAST($end_day AS DATE) AS end_day,
       CAST($view_weight AS DOUBLE) AS view_weight,
       CAST($cart_weight AS DOUBLE) AS cart_weight,
       CAST($purchase_weight AS DOUBLE) AS purchase_weight,
       CAST($half_life_days AS DOUBLE) AS half_life_days,
       CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP) AS built_at;

SELECT count(*) AS pairs,
       count(DISTINCT user_id) AS users,
       count(DISTINCT item_id) AS items,
       coalesce(sum(n_events), 0) AS events,
       coalesce(sum(weight), 0) AS total_weight
FROM interactions;
