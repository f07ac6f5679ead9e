-- The temporal split of the interactions table: `weight` is a pair's training value (its events before
-- the window's last day), NULL for a pair first seen on the last day (a holdout pair). Pairs seen before
-- the last day stay train-only: their last-day events are in neither side. This is
-- als_core.splits.temporal_holdout's rule (event weights are >= 0, so a pair with no positive weight
-- before the last day has all of its positive weight on that day).
CREATE OR REPLACE TEMP VIEW split_pairs AS
SELECT user_id, item_id, CASE WHEN weight_before_last_day > 0 THEN weight_before_last_day END AS weight
FROM interactions;
