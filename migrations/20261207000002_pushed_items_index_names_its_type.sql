-- The operators' list of pushed inbox items reads this index newest first. Its predicate was
-- `delivery IS NOT NULL`, which a drain's read of pending items (`delivery = 'pending'`)
-- implies, so the planner could read that one through it too. While the table's statistics
-- predate every pushed item (both partial indexes then look empty) it did: every batch read
-- scanned all pushed items and sorted them, 10-16 ms instead of 0.05, until autovacuum
-- caught up. Pushed items are always inbox items (`a2a_receive`); naming the type keeps the
-- list's index and takes it out of the drain's reach, which only `activity_logs_pending_idx`
-- serves.
DROP INDEX IF EXISTS activity_logs_pushed_created_idx;
CREATE INDEX activity_logs_pushed_created_idx ON activity_logs (created_at DESC)
    WHERE delivery IS NOT NULL AND activity_type = 'a2a_receive';
