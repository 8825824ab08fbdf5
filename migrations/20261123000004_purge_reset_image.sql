-- What a restart was asked for beyond "start again": a fresh agent session, and a newer
-- image than the one the workspace was pinned to. Coalesced requests OR their flags in.
ALTER TABLE workspace_ops
    ADD COLUMN reset_session boolean NOT NULL DEFAULT false,
    ADD COLUMN upgrade_image boolean NOT NULL DEFAULT false;

-- The image (Docker: the image's content id; EC2: the AMI) the workspace's instance was
-- started from. Later starts reuse it, so a restart never moves a workspace to another
-- image unless asked to upgrade.
ALTER TABLE workspaces ADD COLUMN runtime_image text;

-- Deletes the given workspaces and every row keyed on them: rows of any table with a foreign
-- key to workspaces, or with a `workspace_id` column (some tables keep theirs without a key,
-- on purpose). Found from the catalog at call time, so a table added later is covered
-- without touching this function. Returns how many workspace rows went.
CREATE FUNCTION purge_workspaces(ids uuid[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    target record;
    purged bigint;
BEGIN
    FOR target IN
        SELECT c.conrelid::regclass::text AS tbl, a.attname::text AS col
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.contype = 'f' AND c.confrelid = 'workspaces'::regclass AND c.conrelid <> 'workspaces'::regclass
        UNION
        SELECT format('%I.%I', col.table_schema, col.table_name), col.column_name::text
          FROM information_schema.columns col
          JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE col.column_name = 'workspace_id' AND t.table_type = 'BASE TABLE'
           AND col.table_schema NOT IN ('pg_catalog', 'information_schema')
           AND col.table_name <> 'workspaces'
    LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = ANY ($1)', target.tbl, target.col) USING ids;
    END LOOP;
    DELETE FROM workspaces WHERE id = ANY (ids);
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END
$$;
