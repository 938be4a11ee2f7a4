-- pgwake: compatible
-- 0018_job_metadata: context that is not the handler's input. metadata (a JSON object
-- of at most 64 KiB, NULL when none) for a request id, a batch id, a user; filtered
-- with containment (metadata @> '{"batch": "b-17"}') through jobs_metadata_idx, a GIN
-- index (jsonb_path_ops) of the jobs that have metadata only, so an insert without it
-- costs nothing more. created_by: the role that inserted the job (current_user at the
-- insert); only pgwake's own roles may set it otherwise.
--
-- Compatible with workers of 0017: they never read the new columns, and nothing they
-- insert sets metadata, so the new constraints refuse nothing of theirs; their inserts
-- get created_by from its default.

ALTER TABLE pgwake.jobs
    ADD COLUMN metadata   jsonb,
    ADD COLUMN created_by text NOT NULL DEFAULT current_user;

ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_metadata_must_be_json_object
    CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object');
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_metadata_at_most_64kib
    CHECK (metadata IS NULL OR octet_length(metadata::text) <= 65536);

COMMENT ON TABLE pgwake.jobs IS
    'pgwake job queue. Apps INSERT (tenant_id, kind, payload[, priority, run_at, max_attempts, unique_key, unique_for, timeout, depends_on, run_anyway, metadata]); everything else belongs to the worker.';

-- Jobs by metadata (metadata @> '{...}': a strict operator, so the planner knows such a
-- row is in this partial index). Only jobs that have metadata.
CREATE INDEX jobs_metadata_idx ON pgwake.jobs USING gin (metadata jsonb_path_ops)
    WHERE metadata IS NOT NULL;

-- Confined roles may insert metadata (never created_by).
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
        EXECUTE format('GRANT INSERT (metadata) ON pgwake.jobs TO %I', v_role);
    END LOOP;
END;
$$;
