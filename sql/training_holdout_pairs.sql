-- The holdout of the temporal split in external ids, in id order.
SELECT user_id, item_id FROM split_pairs WHERE weight IS NULL ORDER BY user_id, item_id;
