-- 0010_hostile_rows: PLACEHOLDER on branch `roles` only, so that 0011 applies here.
-- The real 0010 comes from branch `rows` (issue 13, points 1, 2, 7, 8...); when the
-- branches are merged, its file replaces this one.
SELECT 1;
