-- DuckDB's CSV reader numbers only the records it returns (WITH ORDINALITY); the lines it sets aside
-- (store_rejects) keep their line numbers. Reject j (in line order) has line - header_lines - j good
-- records before it, so good record k sits on line header_lines + k + (the rejects_so_far of the last gap
-- with good_before < k): an ASOF LEFT JOIN of the records on this table (no gap before it: 0).
-- line_gaps(rejects, header_lines): per run of set-aside lines, the good records before it and the
-- set-aside lines up to its end; `rejects` names a table with a column `line`. Used by
-- ingest_stage_csv.sql and ingest_stage_jsonl.sql; created once per connection, with the id rule.
CREATE OR REPLACE TEMP MACRO line_gaps(rejects, header_lines) AS TABLE
SELECT good_before, max(rejects_so_far) AS rejects_so_far
FROM (
    SELECT line - header_lines - row_number() OVER (ORDER BY line) AS good_before,
           row_number() OVER (ORDER BY line) AS rejects_so_far
    FROM query_table(rejects)
)
GROUP BY good_before;
