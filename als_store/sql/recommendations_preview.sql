-- The lists of the first users in id order (filtered before the join: the view joins 10M rows otherwise).
SELECT user_id, rank, item_id, round(score, 4) AS score, model_version
FROM recommendations
WHERE user_id IN (SELECT user_id FROM recommendation_users ORDER BY user_id LIMIT $limit_rows)
ORDER BY user_id, rank
LIMIT $limit_rows;
