-- Our own lease on a claimed op: the claim owns the op until `lease_until`, renewed by the
-- running handler. A claim of a running op whose lease has not expired defers instead of
-- taking it over, whatever apalis believes about the worker's heartbeat (ADR 0005).
ALTER TABLE workspace_ops
    ADD COLUMN lease_until timestamptz,
    -- The worker process (worker_processes.id) that holds the current claim.
    ADD COLUMN claimed_by text;

-- When the current instance was started: the provision-timeout clock, so time spent
-- waiting in the queue never counts against the agent.
ALTER TABLE workspaces ADD COLUMN instance_started_at timestamptz;

-- Single-use secrets an instance presents at its first register. One is minted for every
-- start and delivered into the instance; only its sha256 is kept. Starting again revokes
-- the earlier ones, so only the current instance can bring the workspace online.
CREATE TABLE workspace_bootstraps (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    op_id         uuid NOT NULL,
    secret_hash   bytea NOT NULL UNIQUE,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workspace_bootstraps_live_idx ON workspace_bootstraps (workspace_id)
    WHERE used_at IS NULL AND revoked_at IS NULL;

-- This deployment's identity, created once with the database: labels and tags carry it,
-- so two deployments sharing an engine or an AWS account never take each other's instances
-- for orphans unless they are configured to be one platform (PLATFORM_ID).
CREATE TABLE platform (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id          text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO platform (id) VALUES ('p-' || substr(md5(random()::text || clock_timestamp()::text), 1, 16));
