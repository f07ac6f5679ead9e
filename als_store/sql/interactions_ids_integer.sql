-- The window's weighted events with BIGINT ids, for sql/interactions.sql (every id checked to be an integer).
CREATE OR REPLACE TEMP MACRO window_events(start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days) AS TABLE
SELECT CAST(user_id AS BIGINT) AS user_id, CAST(item_id AS BIGINT) AS item_id, * EXCLUDE (user_id, item_id)
FROM weighted_events(start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days);
