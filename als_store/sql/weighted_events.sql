-- Table macro: every event of the window [start_day, end_day] with its weight (event-type weight,
-- times 0.5^(age / half_life) when half_life_days > 0; age measured from the end of end_day).
-- The one definition of the weighting (its parameters: als_core.weighting.EventWeighting): training reads it
-- through sql/interactions.sql, fold-in in the API through sql/serving_user_events.sql.
CREATE OR REPLACE TEMP MACRO weighted_events(start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days) AS TABLE
SELECT user_id,
       item_id,
       event_type,
       ts,
       CASE event_type
           WHEN 'view' THEN view_weight
           WHEN 'cart' THEN cart_weight
           WHEN 'purchase' THEN purchase_weight
       END
       * CASE
           WHEN half_life_days > 0 THEN
               pow(0.5, (epoch(CAST(end_day AS TIMESTAMP) + INTERVAL 1 DAY) - epoch(ts)) / 86400.0 / half_life_days)
           ELSE 1.0
         END AS weight
FROM events
WHERE partition_day BETWEEN start_day AND end_day;
