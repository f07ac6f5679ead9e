CREATE OR REPLACE TEMP TABLE staged_rows (
    line      BIGINT,
    user_raw  VARCHAR,
    item_raw  VARCHAR,
    event_raw VARCHAR,
    ts_raw    VARCHAR,
    raw       VARCHAR,
    malformed VARCHAR,
    user_kind VARCHAR,  -- set when the source typed the id as something other than an integer or text
    item_kind VARCHAR   -- ('a float', 'a JSON object', ...): the row is rejected as a bad id
);
