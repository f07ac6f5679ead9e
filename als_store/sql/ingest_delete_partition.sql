-- Re-materialising a day replaces it; runs inside the ingest transaction, so a failure later in
-- the run rolls the deletes back and the previous rows stay.
DELETE FROM events WHERE partition_day = $day;
DELETE FROM rejected_events WHERE partition_day = $day;
DELETE FROM ingested_files WHERE partition_day = $day;
DELETE FROM partition_id_types WHERE partition_day = $day;
