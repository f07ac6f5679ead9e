-- The champion's precomputed top-N, rebuilt whole by the `recommendations` asset, stored coded: one row per
-- (user, rank) of numbers, and each external id once in its own table (writing 10M VARCHAR ids cost 2 s of
-- a 3 s replace). The view `recommendations` gives the rows with their ids, VARCHAR like `events`.
CREATE TABLE IF NOT EXISTS recommendation_lists (
    user_index    INTEGER NOT NULL,  -- row of recommendation_users
    rank          INTEGER NOT NULL,  -- 1 = best
    item_index    INTEGER NOT NULL,  -- row of recommendation_items
    score         FLOAT   NOT NULL,  -- the model's float32 score
    model_version INTEGER NOT NULL   -- the registered version that produced the row
);
CREATE TABLE IF NOT EXISTS recommendation_users (user_index INTEGER NOT NULL, user_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS recommendation_items (item_index INTEGER NOT NULL, item_id VARCHAR NOT NULL);

-- Which model wrote them, replaced in the same transaction as the rows (one row, none before the first
-- write). A version number alone could name another store's model (MLFLOW_TRACKING_URI changed), so the
-- MLflow run behind the version is kept too: `evaluation` reads the champion's lists back only when all of it
-- matches. The indices above are that model's bundle rows and item indices.
CREATE TABLE IF NOT EXISTS recommendations_model (
    model_name    VARCHAR   NOT NULL,
    model_version INTEGER   NOT NULL,
    mlflow_run_id VARCHAR   NOT NULL,
    n             INTEGER   NOT NULL,  -- recommendations per user (fewer where a user has fewer unseen items)
    written_at    TIMESTAMP NOT NULL
);

CREATE VIEW IF NOT EXISTS recommendations AS
SELECT u.user_id, l.rank, i.item_id, CAST(l.score AS DOUBLE) AS score, l.model_version
FROM recommendation_lists AS l
JOIN recommendation_users AS u USING (user_index)
JOIN recommendation_items AS i USING (item_index);
