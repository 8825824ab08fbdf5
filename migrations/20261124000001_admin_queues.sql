-- Operators' view of the queue: each attempt of an op, paused kinds, the version of each
-- worker process, and the indexes the newest-first job listing reads.

-- One row per claim of an op: written by the claiming statement and closed by the
-- statement that ends the attempt, so an op's history survives its own row's overwrites
-- (`last_error` keeps only the newest error).
CREATE TABLE op_attempts (
    op_id        uuid NOT NULL REFERENCES workspace_ops (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    worker       text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    -- succeeded | retrying | failed | canceled | lost (the lease lapsed and another claim took over)
    outcome      text,
    error        text,
    PRIMARY KEY (op_id, attempt)
);

-- A kind listed here is not claimed: its work waits, durably, until the row is deleted.
CREATE TABLE paused_queues (
    kind       text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL
);

ALTER TABLE worker_processes ADD COLUMN version text;

CREATE INDEX workspace_ops_created_idx ON workspace_ops (created_at DESC);
CREATE INDEX activity_logs_pushed_created_idx ON activity_logs (created_at DESC) WHERE delivery IS NOT NULL;
CREATE INDEX workspace_ops_running_idx ON workspace_ops (claimed_by) WHERE status = 'running';
-- The queue statistics' windows over inbox pushes.
CREATE INDEX activity_logs_delivered_idx ON activity_logs (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX activity_logs_undeliverable_idx ON activity_logs (id) WHERE delivery = 'undeliverable';
