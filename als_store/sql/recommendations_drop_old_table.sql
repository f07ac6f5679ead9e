-- Before the coded layout `recommendations` was a table; the view takes its name (in the caller's transaction).
DROP TABLE recommendations;
