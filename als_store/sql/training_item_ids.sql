SELECT item_id FROM train_items ORDER BY col;
