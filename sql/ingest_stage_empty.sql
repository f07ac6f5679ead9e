CREATE OR REPLACE TEMP TABLE staged_rows (
    line      BIGINT,
    user_raw  VARCHAR,
    item_raw  VARCHAR,
    event_raw VARCHAR,
    ts_raw    VARCHAR,
    raw       VARCHAR,
    malformed VARCHAR
);
