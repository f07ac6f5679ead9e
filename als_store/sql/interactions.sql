-- r_ui: the summed event weights of each (user, item) over the window, rebuilt whole.
-- weight_before_last_day is what the temporal split trains on (sql/training_temporal_pairs.sql), so
-- that training_data reads these pairs instead of aggregating the events a second time. n_events says how
-- many events make up a weight. Nothing else is aggregated, because nothing reads it: per-pair first and
-- last timestamps would add about 1.2 s to this statement's 3.3-3.6 s on 10M events (`events` has them).
-- window_events: sql/interactions_ids_integer.sql or sql/interactions_ids_text.sql. Integer ids are
-- grouped and written faster (writing 6.7M pairs with text ids took 2.8 s of the step's 6.2 s).
CREATE OR REPLACE TABLE interactions AS
SELECT user_id,
       item_id,
       CAST(sum(weight) AS DOUBLE) AS weight,
       count(*) AS n_events,
       CAST(coalesce(sum(weight) FILTER (WHERE ts < CAST($end_day AS TIMESTAMP)), 0) AS DOUBLE) AS weight_before_last_day
FROM window_events($start_day, $end_day, $view_weight, $cart_weight, $purchase_weight, $half_life_days)
GROUP BY user_id, item_id
HAVING sum(weight) > 0;
