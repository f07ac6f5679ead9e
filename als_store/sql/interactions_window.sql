-- The window to build: $window_days days ending at $end_day, or at the latest day with events.
SELECT CAST(end_day - (CAST($window_days AS INTEGER) - 1) AS DATE) AS start_day, end_day
FROM (SELECT coalesce(CAST($end_day AS DATE), (SELECT max(partition_day) FROM events)) AS end_day);
