-- Lines of the CSV file just staged that DuckDB set aside as not UTF-8: where each starts (1-based
-- byte offset in the decompressed file, or the end of the line before it after a CRLF) and DuckDB's
-- copy of it, by position.
SELECT line, min(line_byte_position) AS position, arg_min(csv_line, coalesce(column_idx, 0)) AS csv_line
FROM reject_errors
WHERE error_type = 'INVALID ENCODING'
GROUP BY line
ORDER BY position;
