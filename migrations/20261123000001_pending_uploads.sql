-- Files uploaded into a chat for a workspace's agent, staged until the agent fetches and acks
-- them. The bytes live in the database, split into chunks, so that any api host can serve a
-- file whichever host received it, and so that a file, its chunks and the inbox item that
-- announces it commit (or roll back) together.
CREATE TABLE pending_uploads (
    file_id       uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- Already sanitised: 1 to 100 characters of [A-Za-z0-9._-].
    filename      text NOT NULL CHECK (char_length(filename) BETWEEN 1 AND 100),
    mimetype      text NOT NULL,
    -- 25 MiB at most per file; written once the last chunk is in.
    size_bytes    bigint NOT NULL DEFAULT 0 CHECK (size_bytes BETWEEN 0 AND 26214400),
    created_at    timestamptz NOT NULL DEFAULT now(),
    fetched_at    timestamptz,
    acked_at      timestamptz,
    expires_at    timestamptz NOT NULL DEFAULT now() + interval '24 hours'
);
-- The sweep's two ways a file is done: acked, or expired while unacked.
CREATE INDEX pending_uploads_acked_idx ON pending_uploads (acked_at) WHERE acked_at IS NOT NULL;
CREATE INDEX pending_uploads_expires_idx ON pending_uploads (expires_at) WHERE acked_at IS NULL;

-- A file's bytes in order, about 1 MiB per row: written as the upload streams in, read back
-- one row at a time, so neither side ever holds a whole file in memory.
CREATE TABLE pending_upload_chunks (
    file_id  uuid NOT NULL REFERENCES pending_uploads (file_id) ON DELETE CASCADE,
    seq      integer NOT NULL CHECK (seq >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- Out of line but uncompressed: most uploads (images, PDFs, archives) are compressed already,
-- and compressing them again costs CPU on every write for nothing.
ALTER TABLE pending_upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
