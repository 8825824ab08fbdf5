-- What agents remember. A memory belongs to one workspace; its scope says who else reads it:
-- LOCAL only its owner, TEAM the owner's team (its parent and the parent's direct children,
-- or for a root its direct children), GLOBAL every workspace. Only a root writes GLOBAL.
CREATE TABLE agent_memories (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    content       text NOT NULL,
    scope         text NOT NULL CHECK (scope IN ('LOCAL', 'TEAM', 'GLOBAL')),
    namespace     text NOT NULL DEFAULT 'general' CHECK (char_length(namespace) BETWEEN 1 AND 50),
    -- Kept by Postgres itself, so search never parses rows at query time and an edit can
    -- never leave it stale.
    content_tsv   tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_memories_tsv_idx ON agent_memories USING GIN (content_tsv);
CREATE INDEX agent_memories_ws_ns_idx ON agent_memories (workspace_id, namespace);
CREATE INDEX agent_memories_global_idx ON agent_memories (created_at DESC) WHERE scope = 'GLOBAL';

-- Who wrote, changed or removed shared (GLOBAL) knowledge, and what it was: the digest of
-- the stored content, not the content. No foreign keys: the trail outlives the memory and
-- its workspace, and the retention sweeps do not touch it.
CREATE TABLE memory_audit (
    id              bigserial PRIMARY KEY,
    workspace_id    uuid NOT NULL,
    memory_id       uuid NOT NULL,
    action          text NOT NULL
        CHECK (action IN ('memory_write_global', 'memory_edit_global', 'memory_delete_global')),
    namespace       text NOT NULL,
    content_sha256  text NOT NULL,
    reason          text,
    -- "admin" or "workspace:<id>".
    actor           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memory_audit_memory_idx ON memory_audit (memory_id, id);
CREATE INDEX memory_audit_ws_idx ON memory_audit (workspace_id, id);
