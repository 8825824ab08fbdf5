-- Org API tokens: credentials with the admin token's reach (except minting more of them),
-- for integrations that must be revocable one by one. Same shape as workspace tokens:
-- only the sha256 of the plaintext is kept, with its first 8 characters to recognise it.
CREATE TABLE org_api_tokens (
    id            uuid PRIMARY KEY,
    token_hash    bytea NOT NULL UNIQUE,
    prefix        text NOT NULL,
    name          text,
    -- Who minted it, as ops label their requester ("admin").
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
-- Every request that presents an org token looks up a live hash; the list shows live ones.
CREATE INDEX org_api_tokens_live_idx ON org_api_tokens (token_hash) WHERE revoked_at IS NULL;
CREATE INDEX org_api_tokens_live_created_idx ON org_api_tokens (created_at) WHERE revoked_at IS NULL;
