-- 'BASE TABLE' when `recommendations` is still the table of the layout before the view, 'VIEW' after.
SELECT table_type FROM information_schema.tables WHERE table_schema = 'main' AND table_name = 'recommendations';
