-- The events a day holds before it is replaced (an empty landing file must not wipe them).
SELECT count(*) FROM events WHERE partition_day = $day;
