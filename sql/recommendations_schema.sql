-- The champion's precomputed top-N, one row per (user, rank), rebuilt whole by the `recommendations`
-- asset. Ids are VARCHAR like `events`; model_version is the registered version that produced the rows.
CREATE TABLE IF NOT EXISTS recommendations (
    user_id       VARCHAR NOT NULL,
    rank          INTEGER NOT NULL,  -- 1 = best
    item_id       VARCHAR NOT NULL,
    score         DOUBLE  NOT NULL,
    model_version INTEGER NOT NULL
);
