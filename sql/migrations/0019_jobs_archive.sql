-- pgwake: compatible
-- 0019_jobs_archive: an archive for retention. With the setting retention_archive on,
-- retention moves finished jobs past their status's retention into pgwake.jobs_archive
-- (in the statement that deletes them, so a job is in exactly one of the two tables)
-- instead of deleting them, and deletes archived jobs once they have been archived for
-- retention_archived seconds. `pgwake jobs list --archived` and `pgwake jobs show` read
-- it. Confined roles read their tenants' archived jobs (the same row-level security as
-- pgwake.jobs).
--
-- Compatible with workers of 0018: they never read the new table, and their retention
-- deletes as before (so while one of them leads retention, finished jobs are deleted
-- rather than archived).

CREATE TABLE pgwake.jobs_archive (
    id           bigint      PRIMARY KEY,
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    priority     integer     NOT NULL,
    run_at       timestamptz NOT NULL,
    max_attempts integer     NOT NULL,
    status       text        NOT NULL,
    attempts     integer     NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    last_error   text,
    result       jsonb,
    depends_on   bigint[],
    run_anyway   boolean     NOT NULL,
    metadata     jsonb,
    created_by   text        NOT NULL,
    -- When retention moved it here; it is deleted retention_archived seconds later.
    archived_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgwake.jobs_archive IS
    'pgwake finished jobs moved here by retention (setting retention_archive), kept for retention_archived.';

-- The archive's own retention deletes the oldest archived first.
CREATE INDEX jobs_archive_archived_at_idx ON pgwake.jobs_archive (archived_at);

ALTER TABLE pgwake.jobs_archive ENABLE ROW LEVEL SECURITY;

-- As for pgwake.jobs: confined roles read only their own tenants' archived jobs.
CREATE POLICY jobs_archive_confined_to_own_tenants ON pgwake.jobs_archive
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

-- Confined roles read their tenants' archived jobs too.
CREATE OR REPLACE FUNCTION pgwake.confine_role_to_tenant(p_role name, p_tenant_id text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r
                WHERE r.rolname = p_role AND (r.rolsuper OR r.rolbypassrls)) THEN
        RAISE EXCEPTION 'role % bypasses row-level security (superuser or BYPASSRLS) and '
                        'cannot be confined to a tenant', p_role
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA pgwake TO %I', p_role);
    EXECUTE format(
        'GRANT SELECT, INSERT (tenant_id, kind, payload, priority, run_at, max_attempts, '
        'unique_key, unique_for, timeout, depends_on, run_anyway, metadata) ON pgwake.jobs '
        'TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.jobs_archive TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                   'pgwake.tenant_backlog TO %I', p_role);
    EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                   'ON pgwake.tenants TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;

DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT DISTINCT r.role_name FROM pgwake.tenant_roles AS r
                    JOIN pg_catalog.pg_roles AS g ON g.rolname = r.role_name LOOP
        EXECUTE format('GRANT SELECT ON pgwake.jobs_archive TO %I', v_role);
    END LOOP;
END;
$$;
