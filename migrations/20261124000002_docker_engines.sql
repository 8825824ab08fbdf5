-- Workers on several hosts: a Docker container lives on one engine, so the workspace
-- records which, workers advertise the engines they reach, and operators can retire one.
ALTER TABLE workspaces ADD COLUMN docker_engine text;
ALTER TABLE worker_processes ADD COLUMN docker_engines text[] NOT NULL DEFAULT '{}';

CREATE TABLE docker_engines (
    id         text PRIMARY KEY,
    retired_at timestamptz,
    retired_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Spreading new workspaces counts the live ones per engine.
CREATE INDEX workspaces_docker_engine ON workspaces (docker_engine) WHERE docker_engine IS NOT NULL AND status <> 'removed';
