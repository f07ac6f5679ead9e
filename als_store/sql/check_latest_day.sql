SELECT max(partition_day) FROM events;
