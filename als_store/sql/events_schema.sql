-- Tables of the ingest step. Ids are VARCHAR: logs carry numeric and string ids alike, and
-- keeping them verbatim (trimmed) loses nothing. Timestamps are UTC without a zone.
CREATE TABLE IF NOT EXISTS events (
    user_id       VARCHAR   NOT NULL,
    item_id       VARCHAR   NOT NULL,
    event_type    VARCHAR   NOT NULL CHECK (event_type IN ('view', 'cart', 'purchase')),
    ts            TIMESTAMP NOT NULL,
    partition_day DATE      NOT NULL,
    source_file   VARCHAR   NOT NULL,  -- path under the landing dir
    source_line   BIGINT    NOT NULL   -- line of the record in that file (header = line 1)
);

CREATE TABLE IF NOT EXISTS rejected_events (
    partition_day DATE      NOT NULL,
    source_file   VARCHAR   NOT NULL,
    source_line   BIGINT,
    reason        VARCHAR   NOT NULL,  -- a short category, e.g. 'bad timestamp'
    detail        VARCHAR,             -- what exactly was wrong
    raw           VARCHAR              -- the record as read (CSV line, JSON line, or its fields as JSON)
);

CREATE TABLE IF NOT EXISTS ingested_files (
    partition_day  DATE      NOT NULL,
    source_file    VARCHAR   NOT NULL,
    content_sha256 VARCHAR   NOT NULL,  -- of the decompressed bytes: a re-landed copy is recognised
    size_bytes     BIGINT    NOT NULL,
    rows_loaded    BIGINT    NOT NULL,
    rows_rejected  BIGINT    NOT NULL,
    duplicate_of   VARCHAR,             -- set when the same content was already loaded for the day
    ingested_at    TIMESTAMP NOT NULL
);

-- Per day with events: whether every user and item id of the day is the text of a 64-bit integer
-- (sql/partition_id_types.sql). `interactions` stores ids as BIGINT when every day of its window says so.
CREATE TABLE IF NOT EXISTS partition_id_types (
    partition_day DATE    NOT NULL,
    integer_ids   BOOLEAN NOT NULL
);
