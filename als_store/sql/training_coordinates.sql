-- The train matrix as coordinates (row, column, value) of the coded ids.
SELECT u.row, i.col, p.weight
FROM split_pairs AS p
JOIN train_users AS u USING (user_id)
JOIN train_items AS i USING (item_id)
WHERE p.weight IS NOT NULL;
