-- What `recommendation_lists` holds now: which model versions wrote it, the deepest rank, and its size. The
-- asset leaves it alone when it holds exactly one version, the champion's, at the requested depth.
SELECT min(model_version) AS oldest_version,
       max(model_version) AS newest_version,
       max(rank) AS deepest_rank,
       count(*) AS rows_held
FROM recommendation_lists;
