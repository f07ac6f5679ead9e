SELECT count(*) AS rows_written,
       count(DISTINCT user_id) AS users,
       count(DISTINCT item_id) AS distinct_items,
       min(model_version) AS model_version
FROM recommendations;
