-- The interactions table as the pairs of the random split (the split itself is done in als_core).
CREATE OR REPLACE TEMP VIEW split_pairs AS
SELECT user_id, item_id, weight FROM interactions;
