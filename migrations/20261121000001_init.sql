-- Domain tables. apalis keeps its own schema (`apalis.*`) and migration history.

CREATE TABLE workspaces (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL,
    role                text,
    runtime             text NOT NULL,
    tier                integer NOT NULL CHECK (tier BETWEEN 1 AND 4),
    model               text NOT NULL,
    parent_id           uuid REFERENCES workspaces (id),
    status              text NOT NULL CHECK (status IN (
                            'provisioning', 'online', 'offline', 'degraded', 'failed',
                            'paused', 'awaiting_agent', 'removed')),
    last_sample_error   text,
    url                 text,
    delivery_mode       text NOT NULL DEFAULT 'push' CHECK (delivery_mode IN ('push', 'poll')),
    external            boolean NOT NULL DEFAULT false,
    max_concurrent_tasks integer NOT NULL DEFAULT 1,
    collapsed           boolean NOT NULL DEFAULT false,
    canvas_x            double precision,
    canvas_y            double precision,
    -- The backend that runs the workspace and its reference there. Stop, restart and
    -- sweeps use these, never the backend configured now.
    backend             text CHECK (backend IN ('docker', 'ec2')),
    instance_ref        text,
    agent_card          jsonb,
    last_heartbeat_at   timestamptz,
    last_error_rate     double precision NOT NULL DEFAULT 0,
    active_tasks        integer NOT NULL DEFAULT 0,
    uptime_seconds      bigint NOT NULL DEFAULT 0,
    current_task        text,
    -- When the status last changed: the provisioning-timeout clock.
    status_changed_at   timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- The "failed needs a reason" rule, enforced by the database as well as the code.
    CONSTRAINT failed_has_reason CHECK (status <> 'failed' OR coalesce(btrim(last_sample_error), '') <> '')
);
CREATE INDEX workspaces_parent_idx ON workspaces (parent_id);
CREATE INDEX workspaces_status_idx ON workspaces (status) WHERE status IN ('provisioning', 'online', 'degraded');

CREATE TABLE workspace_tokens (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE,
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX workspace_tokens_live_idx ON workspace_tokens (workspace_id) WHERE revoked_at IS NULL;

CREATE TABLE workspace_ops (
    id             uuid PRIMARY KEY,
    -- Creation order; ops of one workspace run in this order, one at a time.
    seq            bigserial NOT NULL UNIQUE,
    workspace_id   uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('provision', 'stop', 'restart')),
    reason         text NOT NULL,
    status         text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    attempts       integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL,
    last_error     text,
    result         text,
    requested_by   text NOT NULL,
    -- Claim counter: bumped on every claim; every write of a claim is fenced on it.
    lease          bigint NOT NULL DEFAULT 0,
    -- The apalis task currently delivering this op (NULL while it waits its turn).
    task_id        text,
    next_attempt_at timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT finished_when_final CHECK ((status IN ('succeeded', 'failed', 'canceled')) = (finished_at IS NOT NULL))
);
CREATE INDEX workspace_ops_active_idx ON workspace_ops (workspace_id, seq) WHERE status IN ('queued', 'running');
CREATE INDEX workspace_ops_ws_idx ON workspace_ops (workspace_id, created_at DESC);
CREATE INDEX workspace_ops_finished_idx ON workspace_ops (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE structure_events (
    id            bigserial PRIMARY KEY,
    event_type    text NOT NULL,
    workspace_id  uuid,
    payload       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX structure_events_ws_idx ON structure_events (workspace_id, id DESC);
CREATE INDEX structure_events_created_idx ON structure_events (created_at);

-- One row per sweep kind and period: the unique key is what makes a sweep run once per
-- period however many workers tick.
CREATE TABLE sweep_runs (
    sweep         text NOT NULL,
    period_start  timestamptz NOT NULL,
    -- Set in the claiming transaction, right after the task is enqueued.
    task_id       text,
    claimed_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    outcome       text,
    PRIMARY KEY (sweep, period_start)
);

-- Worker processes announce themselves and the backends they reach, so the api can answer
-- 503 when no live worker can start anything, and operators can see who is alive.
CREATE TABLE worker_processes (
    id          text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    backends    text[] NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
