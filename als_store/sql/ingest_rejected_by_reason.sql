SELECT reason, count(*) AS n
FROM rejected_events
WHERE partition_day = $day
GROUP BY reason
ORDER BY n DESC, reason;
