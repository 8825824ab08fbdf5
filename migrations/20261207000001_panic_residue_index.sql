-- The retention sweep's panic-residue check looks for `Running` tasks with `done_at` set.
-- Without an index it reads every retained task, once per period, so its cost grew with
-- the table. A task enters this index only while it is `Running` after an earlier run
-- (apalis keeps that run's `done_at`) or as residue: a first run, the common case, never
-- does, so the queue path does not pay for it.
CREATE INDEX IF NOT EXISTS apalis_jobs_running_done_at_idx
    ON apalis.jobs (done_at) WHERE status = 'Running' AND done_at IS NOT NULL;
