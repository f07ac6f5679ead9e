-- r_ui: the summed event weights of each (user, item) over the window, rebuilt whole.
-- first_ts is kept beside the required columns: it shows when a pair was first seen.
-- weight_before_last_day is what the temporal split trains on (sql/training_temporal_pairs.sql), so
-- that training_data reads these pairs instead of aggregating the events a second time.
-- Summed into a temporary table first: how the ids are stored is decided from the sums (below), and
-- writing millions of text ids into the file costs more than the grouping (2.8 s of 6.2 s for 6.7M pairs).
CREATE OR REPLACE TEMP TABLE interaction_sums AS
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

-- Can the ids be stored as BIGINT? Only when every user and item id is the text a 64-bit integer prints
-- ('42', '-7'; not '007', '+7' or '1e3'): then nothing is lost, and the table is stored as
-- sql/interactions_store_integer_ids.sql, else as sql/interactions_store_text_ids.sql.
SELECT coalesce(bool_and(CAST(TRY_CAST(user_id AS BIGINT) AS VARCHAR) IS NOT DISTINCT FROM user_id
                         AND CAST(TRY_CAST(item_id AS BIGINT) AS VARCHAR) IS NOT DISTINCT FROM item_id), false)
FROM interaction_sums;
