-- `interactions` from the sums of sql/interactions.sql when every id is a canonical 64-bit integer.
CREATE OR REPLACE TABLE interactions AS
SELECT CAST(user_id AS BIGINT) AS user_id, CAST(item_id AS BIGINT) AS item_id, * EXCLUDE (user_id, item_id)
FROM interaction_sums;
