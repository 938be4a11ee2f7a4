-- pgwake: breaking
-- 0002_tenants: per-tenant settings, fleet-wide concurrency caps, pausing.

-- Settings per tenant. A job whose tenant has no row here uses the defaults: no
-- fleet-wide cap, weight 1, not paused, no database of its own.
CREATE TABLE pgwake.tenants (
    tenant_id        text        PRIMARY KEY,
    -- Most jobs of this tenant running at once across every worker process and host;
    -- NULL: no fleet-wide cap (each worker still applies its tenant_concurrency).
    max_concurrency  integer,
    -- Share of each claim relative to other tenants: a tenant with weight 3 gets up to
    -- three jobs for every one of a weight-1 tenant when both have a backlog.
    weight           integer     NOT NULL DEFAULT 1,
    -- A paused tenant's jobs stay queued; no worker claims them until it is resumed.
    paused           boolean     NOT NULL DEFAULT false,
    -- The tenant's own database, encrypted (listener/crypto.py); NULL: none.
    db_dsn_encrypted text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT tenants_tenant_id_not_empty
        CHECK (length(btrim(tenant_id)) > 0 AND length(tenant_id) <= 200),
    CONSTRAINT tenants_max_concurrency_between_0_and_100000
        CHECK (max_concurrency IS NULL OR max_concurrency BETWEEN 0 AND 100000),
    CONSTRAINT tenants_weight_between_1_and_100
        CHECK (weight BETWEEN 1 AND 100),
    CONSTRAINT tenants_db_dsn_is_ciphertext
        CHECK (db_dsn_encrypted IS NULL OR db_dsn_encrypted LIKE 'pgwake:v1:%')
);

COMMENT ON TABLE pgwake.tenants IS
    'pgwake per-tenant settings: fleet-wide max_concurrency, weight, paused, encrypted own-database DSN.';

-- Running jobs per tenant: the fleet-wide cap counts them inside the claim.
CREATE INDEX jobs_running_tenant_idx ON pgwake.jobs (tenant_id) WHERE status = 'running';

-- Free fleet-wide slots of a capped tenant, for the claim.
--
-- Claims for one capped tenant are serialised across the fleet with a transaction-level
-- advisory lock (try-lock: a claimer that cannot get it skips the tenant this round;
-- whoever holds it is serving the tenant). The count runs after the lock is taken, and
-- since this function is VOLATILE its query gets a fresh snapshot under READ COMMITTED:
-- it sees every claim committed by the previous holder of the lock. So the count plus
-- what this claim takes never exceeds the cap. The lock is released when the claiming
-- statement's transaction ends.
CREATE FUNCTION pgwake.tenant_free_slots(p_tenant_id text, p_cap integer) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(1885828961, hashtext(p_tenant_id)) THEN
        RETURN 0;
    END IF;
    RETURN greatest(
        p_cap - (SELECT count(*)::integer
                   FROM pgwake.jobs
                  WHERE tenant_id = p_tenant_id AND status = 'running'),
        0);
END;
$$;
