-- The holdout of the temporal split in external ids, in the order of their text (the order the holdout
-- fingerprint hashes them in: it then has nothing to sort, whether the ids are stored as text or BIGINT).
SELECT user_id, item_id FROM split_pairs WHERE weight IS NULL
ORDER BY CAST(user_id AS VARCHAR), CAST(item_id AS VARCHAR);
