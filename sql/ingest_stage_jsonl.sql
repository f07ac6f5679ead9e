-- Stage one JSON-lines file: each physical line is read as one text value (the delimiter is a
-- control character that valid JSON never holds unescaped), then fields are extracted by path.
-- Blank lines are skipped; a line that is not a JSON object is staged as malformed. An id that JSON
-- types as no integer or text (a fraction, an object, an array, true/false) gets its kind
-- (json_id_kind, sql/ingest_id_rule.sql).
DROP TABLE IF EXISTS reject_errors;
DROP TABLE IF EXISTS reject_scans;

CREATE OR REPLACE TEMP TABLE staged_rows AS
WITH lines AS (
    SELECT ordinality AS line, doc
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
    ) WITH ORDINALITY
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

-- a line holding the delimiter character is not valid JSON either
INSERT INTO staged_rows
SELECT line, NULL, NULL, NULL, NULL, trim(arg_min(csv_line, column_idx), E'\r\n'), 'not a JSON object', NULL, NULL
FROM reject_errors
GROUP BY line;
