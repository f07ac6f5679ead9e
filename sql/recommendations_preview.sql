SELECT user_id, rank, item_id, round(score, 4) AS score, model_version
FROM recommendations
ORDER BY user_id, rank
LIMIT $limit_rows;
