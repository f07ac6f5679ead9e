-- What `recommendations` holds now: which model versions wrote it, the deepest rank, and its size. The asset
-- leaves the table alone when it already holds exactly one version, the champion's, at the requested depth.
SELECT min(model_version) AS oldest_version,
       max(model_version) AS newest_version,
       max(rank) AS deepest_rank,
       count(*) AS rows_held
FROM recommendations;
