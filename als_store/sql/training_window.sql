SELECT start_day, end_day, view_weight, cart_weight, purchase_weight, half_life_days
FROM interactions_window;
