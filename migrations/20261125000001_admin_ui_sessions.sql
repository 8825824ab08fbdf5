-- Sessions of the operators' dashboard (`/admin/ui`). The cookie carries a random session id;
-- only its sha256 is kept, like every other credential here. Sessions live in the database
-- so that they survive api restarts and are valid on every api replica sharing it.
CREATE TABLE admin_ui_sessions (
    id_hash       bytea PRIMARY KEY,
    -- The token every dashboard form carries back; it is no credential without the cookie.
    csrf_token    text NOT NULL,
    -- Written as the operator on what the session's actions change ("admin-ui", ...).
    operator      text NOT NULL,
    -- A session opened with an org token ends when that token is revoked.
    org_token_id  uuid REFERENCES org_api_tokens (id) ON DELETE CASCADE,
    -- A session opened with the admin token holds its sha256, and ends when ADMIN_TOKEN is
    -- changed: rotating a leaked token must also end the sessions opened with it.
    admin_token_hash bytea,
    CHECK ((org_token_id IS NULL) <> (admin_token_hash IS NULL)),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX admin_ui_sessions_expires_idx ON admin_ui_sessions (expires_at);
