-- pgwake: compatible
-- 0003_tenant_app_roles: least-privilege application roles confined to their tenants
-- with row-level security.
--
-- A role listed in pgwake.tenant_roles sees and inserts only the jobs of the tenants
-- it is listed for. Every other role (the worker, administrators, apps that are not
-- confined) is unaffected by the policies; table privileges still apply to all.

CREATE TABLE pgwake.tenant_roles (
    role_name  name        NOT NULL,
    tenant_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, tenant_id)
);

COMMENT ON TABLE pgwake.tenant_roles IS
    'Roles confined by row-level security to the jobs of the listed tenants.';

ALTER TABLE pgwake.jobs ENABLE ROW LEVEL SECURITY;

-- The tenants a role is confined to, or NULL when it is not confined. SECURITY DEFINER
-- because confined roles cannot read pgwake.tenant_roles; the policies pass
-- current_user, which inside the function would be its owner.
CREATE FUNCTION pgwake.confined_tenants(p_role name) RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pgwake AS $$
    SELECT array_agg(r.tenant_id) FROM pgwake.tenant_roles AS r WHERE r.role_name = p_role;
$$;

-- Confined roles read and write only their own tenants' rows; other roles are not
-- restricted by rows (only by their privileges).
CREATE POLICY jobs_confined_to_own_tenants ON pgwake.jobs
    USING (pgwake.confined_tenants(current_user) IS NULL
           OR tenant_id = ANY (pgwake.confined_tenants(current_user)))
    WITH CHECK (pgwake.confined_tenants(current_user) IS NULL
                OR tenant_id = ANY (pgwake.confined_tenants(current_user)));

-- The insert trigger marks future jobs scheduled and notifies; it runs with the
-- privileges of its owner so that an app role needs only INSERT.
ALTER FUNCTION pgwake.jobs_after_insert() SECURITY DEFINER SET search_path = pg_catalog, pgwake;

-- Confines an existing role to a tenant and grants what an app needs to enqueue:
-- USAGE on the schema, INSERT of the app columns, SELECT of its own jobs. Call it once
-- per (role, tenant) as an administrator:
--     CREATE ROLE acme_app LOGIN PASSWORD '...';
--     SELECT pgwake.confine_role_to_tenant('acme_app', 'acme');
CREATE FUNCTION pgwake.confine_role_to_tenant(p_role name, p_tenant_id text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA pgwake TO %I', p_role);
    EXECUTE format(
        'GRANT SELECT, INSERT (tenant_id, kind, payload, priority, run_at, max_attempts, '
        'unique_key, timeout) ON pgwake.jobs TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;
