-- Replace the whole table with the staged Parquet batches; the caller wraps this in one transaction,
-- so readers see either the previous champion's rows or the new ones.
-- The batches are numeric (user row, rank, item index, float32 score); the external ids come from the two
-- staged id maps, cast to VARCHAR once per id. No ORDER BY: nothing reads the table in storage order (every
-- query orders by itself), and sorting 10M rows made the replace 0.8-1.3 s slower.
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, rank, item_id, score, model_version)
SELECT u.user_id, CAST(r.rank AS INTEGER), i.item_id, CAST(r.score AS DOUBLE), CAST($model_version AS INTEGER)
FROM read_parquet($staged_files) AS r
JOIN (SELECT user_index, CAST(user_id AS VARCHAR) AS user_id FROM read_parquet($user_ids_file)) AS u
    ON u.user_index = r.user_index
JOIN (SELECT item_index, CAST(item_id AS VARCHAR) AS item_id FROM read_parquet($item_ids_file)) AS i
    ON i.item_index = r.item_index;
DELETE FROM recommendations_model;
INSERT INTO recommendations_model
VALUES ($model_name, CAST($model_version AS INTEGER), $mlflow_run_id, CAST($n AS INTEGER), CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP));
