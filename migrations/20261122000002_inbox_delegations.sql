-- Every workspace's activity log, which is also its inbox: rows of type `a2a_receive` are the
-- items its agent receives. Ids come from one sequence but are drawn only while the writer
-- holds the workspace's `inbox_heads` row, so within a workspace they grow in commit order
-- and a poller's `since_id` cursor never skips a row that commits late.
CREATE TABLE activity_logs (
    id                 bigserial PRIMARY KEY,
    workspace_id       uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    activity_type      text NOT NULL,
    method             text,
    -- Who caused the row (a workspace); NULL for the admin, the canvas or the platform.
    source_id          uuid,
    target_id          uuid,
    summary            text,
    request_body       jsonb,
    response_body      jsonb,
    status             text NOT NULL DEFAULT 'ok',
    error_detail       text,
    duration_ms        integer,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Push delivery of an inbox item to a push-mode agent; NULL when the row is not pushed
    -- (poll mode: the row itself is the delivery).
    delivery           text CHECK (delivery IN ('pending', 'delivered', 'undeliverable')),
    delivery_attempts  integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz,
    delivered_at       timestamptz
);
CREATE INDEX activity_logs_ws_idx ON activity_logs (workspace_id, id);
CREATE INDEX activity_logs_ws_type_idx ON activity_logs (workspace_id, activity_type, id);
CREATE INDEX activity_logs_pending_idx ON activity_logs (workspace_id, id) WHERE delivery = 'pending';
CREATE INDEX activity_logs_created_idx ON activity_logs (created_at);

-- One row per workspace that has activity. Writers lock it (see above); it also holds the
-- push drain of the workspace's inbox: at most one InboxPush task is due per workspace
-- (`drain_task_id`), and the claim running it holds a lease like an op's.
CREATE TABLE inbox_heads (
    workspace_id       uuid PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    drain_task_id      text,
    drain_lease        bigint NOT NULL DEFAULT 0,
    drain_lease_until  timestamptz,
    drain_claimed_by   text
);

-- Every push attempt, for operators and for the spacing of retries to be checked.
CREATE TABLE inbox_delivery_attempts (
    item_id      bigint NOT NULL REFERENCES activity_logs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    http_status  integer,
    error        text,
    worker       text,
    PRIMARY KEY (item_id, attempt)
);

-- The delegations ledger. No foreign keys: a delegation's history outlives its workspaces.
CREATE TABLE delegations (
    delegation_id    text PRIMARY KEY,
    caller_id        uuid NOT NULL,
    callee_id        uuid NOT NULL,
    task_preview     text NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'dispatched', 'in_progress', 'completed', 'failed', 'stuck')),
    last_heartbeat   timestamptz,
    deadline         timestamptz NOT NULL DEFAULT now() + interval '6 hours',
    result_preview   text,
    error_detail     text,
    retry_count      integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    idempotency_key  text
);
CREATE INDEX idx_delegations_inflight_heartbeat ON delegations (last_heartbeat NULLS FIRST)
    WHERE status IN ('queued', 'dispatched', 'in_progress');
CREATE INDEX idx_delegations_caller_created ON delegations (caller_id, created_at DESC);
CREATE INDEX idx_delegations_callee_created ON delegations (callee_id, created_at DESC);
CREATE INDEX idx_delegations_status_created ON delegations (status, created_at DESC);
CREATE UNIQUE INDEX idx_delegations_idempotency ON delegations (caller_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
