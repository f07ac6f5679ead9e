-- Stage one CSV file as text into staged_rows(line, user_raw, item_raw, event_raw, ts_raw, raw, malformed).
-- $columns names every column of the file (all VARCHAR); the mapped ones are called user_raw,
-- item_raw, event_raw and ts_raw. Rows of the wrong shape (truncated, extra fields, bad quoting)
-- are set aside by DuckDB's reader into reject_errors and staged as malformed.
DROP TABLE IF EXISTS reject_errors;
DROP TABLE IF EXISTS reject_scans;

CREATE OR REPLACE TEMP TABLE csv_records AS
SELECT ordinality AS record, user_raw, item_raw, event_raw, ts_raw
FROM read_csv(
    $path,
    header = $header,
    auto_detect = false,
    columns = $columns,
    delim = $delim,
    quote = '"',
    escape = '"',
    null_padding = false,
    store_rejects = true
) WITH ORDINALITY;

-- The first problem of each line. An error of the whole line (LINE SIZE OVER MAXIMUM) has no column:
-- it comes first, with what DuckDB keeps of the line's text.
CREATE OR REPLACE TEMP TABLE csv_rejects AS
SELECT line,
       arg_min(error_type || ': ' || error_message, coalesce(column_idx, 0)) AS problem,
       arg_min(csv_line, coalesce(column_idx, 0)) AS csv_line
FROM reject_errors
GROUP BY line;

-- Good records carry no line number; the reader's rejects do (line_gaps, sql/ingest_line_gaps.sql).
CREATE OR REPLACE TEMP TABLE staged_rows AS
SELECT $header_lines + r.record + coalesce(g.rejects_so_far, 0) AS line,
       r.user_raw, r.item_raw, r.event_raw, r.ts_raw,
       NULL::VARCHAR AS raw,
       NULL::VARCHAR AS malformed,
       NULL::VARCHAR AS user_kind,  -- CSV fields are text
       NULL::VARCHAR AS item_kind
FROM csv_records AS r
ASOF LEFT JOIN line_gaps('csv_rejects', $header_lines) AS g ON r.record > g.good_before
UNION ALL
SELECT line, NULL, NULL, NULL, NULL, trim(csv_line, E'\r\n'), problem, NULL, NULL
FROM csv_rejects;
