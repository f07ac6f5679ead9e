-- How `interactions` stores ids (after sql/partition_id_types.sql filled in the window's days): BIGINT
-- when every day of the window has integer ids (then sql/interactions_ids_integer.sql), else text as in
-- `events` (sql/interactions_ids_text.sql).
SELECT coalesce(bool_and(integer_ids), false) AS integer_ids
FROM partition_id_types
WHERE partition_day BETWEEN $start_day AND $end_day;
