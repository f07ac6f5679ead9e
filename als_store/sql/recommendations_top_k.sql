-- The first $k ranks of every list, coded (bundle row, rank, item index) for Python.
SELECT user_index, rank, item_index, score FROM recommendation_lists WHERE rank <= $k;
