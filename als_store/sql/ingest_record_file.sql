INSERT INTO ingested_files
    (partition_day, source_file, content_sha256, size_bytes, rows_loaded, rows_rejected, duplicate_of, ingested_at)
VALUES ($day, $source_file, $content_sha256, $size_bytes, $rows_loaded, $rows_rejected, $duplicate_of,
        CAST(now() AT TIME ZONE 'UTC' AS TIMESTAMP));
