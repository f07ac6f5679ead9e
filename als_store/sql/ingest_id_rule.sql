-- The id rule, agreed with the API (serving/schemas.py ID_PATTERN, MAX_ID_LENGTH): an id is an integer,
-- or text that after trimming its spaces (' ' only: DuckDB's trim() alone also strips U+00A0 and the other Unicode
-- spaces, which the API keeps) is 1-128 characters with no character in U+0000-U+0020 or U+007F-U+009F
-- (no whitespace, no control character). One definition for the text path (ingest_classify.sql) and
-- typed Parquet (ingest_typed_rows.sql); both call these temp macros, created once per connection.
-- trimmed_id(text): the id as kept, its leading and trailing spaces trimmed (' ' only, see above).
CREATE OR REPLACE TEMP MACRO trimmed_id(text) AS trim(text, ' ');

-- id_problem(id): NULL for a good trimmed, non-empty id, else what is wrong ("user id " goes before it).
CREATE OR REPLACE TEMP MACRO id_problem(id) AS
    CASE
        WHEN length(id) > 128 THEN 'longer than 128 characters (' || CAST(length(id) AS VARCHAR) || ')'
        WHEN regexp_matches(id, '[\x00-\x20\x7f-\x9f]') THEN
            CASE
                WHEN regexp_extract(id, '[\x00-\x20\x7f-\x9f]') = ' ' THEN 'has a space'
                ELSE 'has a control character ' || printf('U+%04X', unicode(regexp_extract(id, '[\x00-\x20\x7f-\x9f]')))
            END
    END;

-- kind_problem(kind, value): what a value that is no integer or text is ('is a float: 2.5'); the value
-- is cut to 40 characters (the reject's raw keeps all of it)
CREATE OR REPLACE TEMP MACRO kind_problem(kind, value) AS
    'is ' || kind || ': ' || CASE WHEN length(value) > 40 THEN left(value, 40) || '...' ELSE value END;

-- json_id_kind(json_type, text): the kind of a JSON id that is no integer or text, else NULL
CREATE OR REPLACE TEMP MACRO json_id_kind(json_type, text) AS
    CASE json_type
        -- a number with a fraction or an exponent; digits alone are an integer, even past 64 bits
        WHEN 'DOUBLE' THEN CASE WHEN NOT regexp_full_match(text, '-?[0-9]+') THEN 'a float' END
        WHEN 'OBJECT' THEN 'a JSON object'
        WHEN 'ARRAY' THEN 'a JSON array'
        WHEN 'BOOLEAN' THEN 'a boolean'
    END;
