-- The retention sweep deletes finished apalis tasks by age in small batches; without this
-- index each batch would scan the whole table. apalis' own migrations never touch it.
CREATE INDEX IF NOT EXISTS apalis_jobs_finished_done_at_idx
    ON apalis.jobs (done_at) WHERE status IN ('Done', 'Killed', 'Failed');
CREATE INDEX IF NOT EXISTS sweep_runs_claimed_idx ON sweep_runs (claimed_at);
