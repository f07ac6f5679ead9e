-- The first $k ranks of some users' lists, coded for Python: `wanted_users(user_id, position)` and
-- `known_items(item_id, item_index)` are the caller's registered id maps (ids as the table stores them).
SELECT w.position, CAST(r.rank AS INTEGER) AS rank, i.item_index, CAST(r.score AS FLOAT) AS score
FROM recommendations AS r
JOIN wanted_users AS w ON w.user_id = r.user_id
JOIN known_items AS i ON i.item_id = r.item_id
WHERE r.rank <= $k;
