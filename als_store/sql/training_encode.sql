-- Rows and columns of the train matrix: the distinct users and items of the training pairs
-- (weight not NULL), numbered in id order (byte order of the text, as a sort of the ids in Python gives;
-- also when `interactions` stores them as BIGINT, so that the rows do not depend on how they are stored).
-- Ids are coded here, by DuckDB, so that only integers travel to Python for millions of pairs.
CREATE OR REPLACE TEMP TABLE train_users AS
SELECT user_id, CAST(row_number() OVER (ORDER BY CAST(user_id AS VARCHAR)) - 1 AS INTEGER) AS row
FROM (SELECT DISTINCT user_id FROM split_pairs WHERE weight IS NOT NULL);

CREATE OR REPLACE TEMP TABLE train_items AS
SELECT item_id, CAST(row_number() OVER (ORDER BY CAST(item_id AS VARCHAR)) - 1 AS INTEGER) AS col
FROM (SELECT DISTINCT item_id FROM split_pairs WHERE weight IS NOT NULL);
