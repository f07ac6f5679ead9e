-- The interactions table as coordinates, for the random split.
SELECT user_id, item_id, weight FROM interactions;
