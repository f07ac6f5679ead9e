-- Stage one JSON-lines file: each physical line is read as one text value (the delimiter is a
-- control character that valid JSON never holds unescaped), then fields are extracted by path.
-- Blank lines are skipped; a line that is not a JSON object is staged as malformed.
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
       json_extract_string(object, $user_path) AS user_raw,
       json_extract_string(object, $item_path) AS item_raw,
       json_extract_string(object, $event_path) AS event_raw,
       json_extract_string(object, $ts_path) AS ts_raw,
       doc AS raw,
       CASE WHEN NOT is_object THEN 'not a JSON object' END AS malformed
FROM objects;

-- a line holding the delimiter character is not valid JSON either
INSERT INTO staged_rows
SELECT line, NULL, NULL, NULL, NULL, trim(arg_min(csv_line, column_idx), E'\r\n'), 'not a JSON object'
FROM reject_errors
GROUP BY line;
