-- Record, for the days between $start_day and $end_day that have events and no record yet, whether every
-- id of the day is a canonical 64-bit integer: the text BIGINT prints back ('42', '-7'; not '007', '+7',
-- '1e3' or a number past int64), so storing it as BIGINT loses nothing. The ingest records its day (the
-- day's previous record is deleted with its rows); `interactions` records any day of its window that has
-- none (a record deleted by hand, as its error message suggests, is computed again).
CREATE OR REPLACE TEMP MACRO integer_text(id) AS CAST(TRY_CAST(id AS BIGINT) AS VARCHAR) IS NOT DISTINCT FROM id;

INSERT INTO partition_id_types
SELECT partition_day, bool_and(integer_text(user_id) AND integer_text(item_id))
FROM events
WHERE partition_day BETWEEN $start_day AND $end_day
  AND partition_day NOT IN (SELECT partition_day FROM partition_id_types)
GROUP BY partition_day;
