-- Events per `events` day, to count what a model's training window held (`python -m pipelines status`).
SELECT partition_day, count(*) AS events
FROM events
GROUP BY partition_day
ORDER BY partition_day;
