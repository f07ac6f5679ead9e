SELECT count(*) AS rows_written,
       count(DISTINCT user_index) AS users,
       count(DISTINCT item_index) AS distinct_items,
       min(model_version) AS model_version
FROM recommendation_lists;
