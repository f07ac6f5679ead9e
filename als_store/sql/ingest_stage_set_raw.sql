-- The raw copy of staged lines read again from the file (registered as `raw_lines`: line, raw).
UPDATE staged_rows SET raw = r.raw
FROM raw_lines AS r
WHERE staged_rows.line = r.line;
