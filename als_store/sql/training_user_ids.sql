SELECT user_id FROM train_users ORDER BY row;
