-- `interactions` from the sums of sql/interactions.sql, ids as the events carry them (text).
CREATE OR REPLACE TABLE interactions AS
SELECT * FROM interaction_sums;
