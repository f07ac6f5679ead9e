-- Weights per (user, item, day) over the window, for the temporal split (the day is the time).
SELECT user_id, item_id, CAST(ts AS DATE) AS day, sum(weight) AS weight
FROM weighted_events($start_day, $end_day, $view_weight, $cart_weight, $purchase_weight, $half_life_days)
GROUP BY ALL
HAVING sum(weight) > 0;
