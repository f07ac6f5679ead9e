-- The champion's precomputed top-N, one row per (user, rank), rebuilt whole by the `recommendations`
-- asset. Ids are VARCHAR like `events`; model_version is the registered version that produced the rows.
CREATE TABLE IF NOT EXISTS recommendations (
    user_id       VARCHAR NOT NULL,
    rank          INTEGER NOT NULL,  -- 1 = best
    item_id       VARCHAR NOT NULL,
    score         DOUBLE  NOT NULL,
    model_version INTEGER NOT NULL
);

-- Which model wrote `recommendations`, replaced in the same transaction as the rows (one row, none before the
-- first write). A version number alone could name another store's model (MLFLOW_TRACKING_URI changed), so the
-- MLflow run behind the version is kept too: `evaluation` reads the champion's lists back from the table only
-- when all of it matches.
CREATE TABLE IF NOT EXISTS recommendations_model (
    model_name    VARCHAR   NOT NULL,
    model_version INTEGER   NOT NULL,
    mlflow_run_id VARCHAR   NOT NULL,
    n             INTEGER   NOT NULL,  -- recommendations per user (fewer where a user has fewer unseen items)
    written_at    TIMESTAMP NOT NULL
);
