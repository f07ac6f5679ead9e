-- Replace the whole table with the staged Parquet batches; the caller wraps this in one transaction,
-- so readers see either the previous champion's rows or the new ones.
DELETE FROM recommendations;
INSERT INTO recommendations (user_id, rank, item_id, score, model_version)
SELECT CAST(user_id AS VARCHAR), CAST(rank AS INTEGER), CAST(item_id AS VARCHAR), CAST(score AS DOUBLE),
       CAST(model_version AS INTEGER)
FROM read_parquet($staged_files)
ORDER BY user_id, rank;
