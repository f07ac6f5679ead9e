-- Stage one JSON-lines file: each physical line is read as one text value (the delimiter is a
-- control character that valid JSON never holds unescaped), then fields are extracted by path.
-- Blank lines are skipped; a line that is not a JSON object is staged as malformed. An id that JSON
-- types as no integer or text (a fraction, an object, an array, true/false) gets its kind
-- (json_id_kind, sql/ingest_id_rule.sql).
DROP TABLE IF EXISTS reject_errors;
DROP TABLE IF EXISTS reject_scans;

CREATE OR REPLACE TEMP TABLE jsonl_records AS
SELECT ordinality AS record, doc
FROM read_csv(
    $path,
    header = false,
    auto_detect = false,
    columns = {'doc': 'VARCHAR'},
    delim = $delim,
    quote = '',
    escape = '',
    null_padding = false,
    store_rejects = true
) WITH ORDINALITY;

-- Lines the reader set aside: one holding the delimiter character (not valid JSON either), or one over
-- DuckDB's maximum line size (no column; DuckDB keeps the start of its text).
CREATE OR REPLACE TEMP TABLE jsonl_rejects AS
SELECT line,
       trim(arg_min(csv_line, coalesce(column_idx, 0)), E'\r\n') AS doc,
       CASE WHEN bool_or(error_type = 'LINE SIZE OVER MAXIMUM')
            THEN 'LINE SIZE OVER MAXIMUM: ' || arg_min(error_message, coalesce(column_idx, 0))
            ELSE 'not a JSON object' END AS problem
FROM reject_errors
GROUP BY line;

-- The reader numbers only the lines it returns: put the set-aside ones back in between
-- (sql/ingest_line_gaps.sql), so that every line keeps its number.
CREATE OR REPLACE TEMP TABLE staged_rows AS
WITH lines AS (
    SELECT r.record + coalesce(g.rejects_so_far, 0) AS line, r.doc
    FROM jsonl_records AS r
    ASOF LEFT JOIN line_gaps('jsonl_rejects', 0) AS g ON r.record > g.good_before
),
checked AS (
    -- valid JSON that starts with '{' is an object (json_type would raise on invalid text)
    SELECT line, doc, coalesce(json_valid(doc) AND starts_with(ltrim(doc), '{'), false) AS is_object
    FROM lines
    WHERE doc IS NOT NULL AND trim(doc) <> ''
),
objects AS (  -- extraction raises on invalid JSON: only objects reach it (CASE alone does not guard)
    SELECT line, doc, is_object, CASE WHEN is_object THEN doc END AS object
    FROM checked
)
SELECT line,
       user_raw,
       item_raw,
       json_extract_string(object, $event_path) AS event_raw,
       json_extract_string(object, $ts_path) AS ts_raw,
       doc AS raw,
       CASE WHEN NOT is_object THEN 'not a JSON object' END AS malformed,
       json_id_kind(json_type(object, $user_path), user_raw) AS user_kind,
       json_id_kind(json_type(object, $item_path), item_raw) AS item_kind
FROM (
    SELECT *,
           json_extract_string(object, $user_path) AS user_raw,
           json_extract_string(object, $item_path) AS item_raw
    FROM objects
);

INSERT INTO staged_rows
SELECT line, NULL, NULL, NULL, NULL, doc, problem, NULL, NULL
FROM jsonl_rejects;
