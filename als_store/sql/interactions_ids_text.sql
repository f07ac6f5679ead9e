-- The window's weighted events with ids as text, as `events` holds them, for sql/interactions.sql.
CREATE OR REPLACE TEMP MACRO window_events(start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days) AS TABLE
SELECT * FROM weighted_events(start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days);
