-- The files each of the given days was last ingested from (`ingested_files` holds exactly the day's last
-- ingest): the landing sensor requests no run for a day whose landing files are these same files, with the
-- same size and content.
SELECT CAST(partition_day AS VARCHAR) AS day, source_file, size_bytes, content_sha256
FROM ingested_files
WHERE list_contains($days, CAST(partition_day AS VARCHAR));
