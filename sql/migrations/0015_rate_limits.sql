-- pgwake: breaking
-- 0015_rate_limits: rate limits enforced inside the claim, exactly across the fleet: per
-- tenant (pgwake.tenants.rate_limit, rate_period), per kind across tenants and per kind
-- within each tenant (the new table pgwake.limits). pgwake.rate_windows records what
-- each limit has let start (an exact sliding window) and is locked by the claim, per
-- key, as a tenant's row is for its fleet-wide cap. A change of a limit wakes the
-- workers (a trigger on both tables). And priority across tenants: the index
-- jobs_ready_priority_idx (ready jobs whose priority is not the default 0) lets the
-- claim find the highest ready priority and the tenants holding it.
--
-- Breaking: workers of 0014 would claim without reading the limits (and by priority
-- only within each tenant), so while one ran the limits would not hold; they refuse to
-- start against this schema, and running ones stop at their next check
-- (docs/operations.md, "Upgrade pgwake").

-- Table pgwake.jobs: priority across tenants ------------------------------------------

-- The claim's priority levels: the highest and lowest ready priority, and the tenants
-- holding ready jobs of the highest (priority first, so one level's tenants are a
-- range of the index, walked one probe per tenant). Only jobs whose priority is not
-- the default 0: an enqueue at the default priority does not maintain it.
CREATE INDEX jobs_ready_priority_idx ON pgwake.jobs (priority DESC, tenant_id)
    WHERE status = 'queued' AND priority <> 0;

-- Table pgwake.tenants: a rate limit per tenant ---------------------------------------

-- At most rate_limit jobs of the tenant started in any rate_period, across every
-- worker (both NULL: no rate limit). Changing them takes effect at the next claim and
-- wakes the workers (pgwake.rate_limits_after_change).
ALTER TABLE pgwake.tenants
    ADD COLUMN rate_limit  integer,
    ADD COLUMN rate_period interval,
    ADD CONSTRAINT tenants_rate_limit_between_1_and_1000000
        CHECK (rate_limit IS NULL OR rate_limit BETWEEN 1 AND 1000000),
    ADD CONSTRAINT tenants_rate_period_between_1_second_and_1_day
        CHECK (rate_period IS NULL OR rate_period BETWEEN interval '1 second' AND interval '1 day'),
    ADD CONSTRAINT tenants_rate_limit_and_rate_period_set_together
        CHECK ((rate_limit IS NULL) = (rate_period IS NULL));

-- Table pgwake.limits: rate limits per kind (the CLI's `pgwake limits`) ----------------

-- Rate limits per kind: at most rate_limit jobs of the kind started in any rate_period,
-- across all tenants (per_tenant false) or within each tenant (per_tenant true). A kind
-- may have both. Enforced inside the claim, exactly across every worker (see
-- pgwake.rate_free); a change takes effect at the next claim and wakes the workers.
CREATE TABLE pgwake.limits (
    kind        text        NOT NULL,
    per_tenant  boolean     NOT NULL DEFAULT false,
    rate_limit  integer     NOT NULL,
    rate_period interval    NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, per_tenant),

    CONSTRAINT limits_kind_not_empty
        CHECK (length(btrim(kind)) > 0 AND length(kind) <= 200),
    CONSTRAINT limits_rate_limit_between_1_and_1000000
        CHECK (rate_limit BETWEEN 1 AND 1000000),
    CONSTRAINT limits_rate_period_between_1_second_and_1_day
        CHECK (rate_period BETWEEN interval '1 second' AND interval '1 day')
);

COMMENT ON TABLE pgwake.limits IS
    'pgwake rate limits per kind: at most rate_limit jobs started per rate_period, across tenants or per tenant.';

-- Table pgwake.rate_windows: what the rate limits have let start ---------------------

-- One row per limited key: a tenant ('tenant', '', tenant_id), a kind across tenants
-- ('kind', kind, '') or a kind within one tenant ('kind_tenant', kind, tenant_id). The
-- algorithm is an exact sliding window (a log of starts): started_at[i] and started[i]
-- say that a claim at started_at[i] (its now(), which is also the jobs' started_at)
-- started started[i] jobs under the key. A claim may start limit minus the jobs
-- started in the period before its own now(), so no interval of one period ever holds
-- more than the limit, and a key that was idle a whole period may start its whole
-- limit at once (a burst at the window's start). Entries older than the period (and a
-- second's margin for claims whose now() is a little older than another's) are dropped
-- by each claim; pruned_until is the newest start dropped, and a claim whose now() is
-- within a period of it starts nothing under the key (it cannot count exactly).
-- full_until is set while the key is full: the time its next start is allowed; the
-- claim's walk passes over a full tenant, and leaves out a full kind, until then.
-- Only pgwake's own roles read or write this table: the claim locks its rows.
CREATE TABLE pgwake.rate_windows (
    scope        text          NOT NULL,
    kind         text          NOT NULL DEFAULT '',
    tenant_id    text          NOT NULL DEFAULT '',
    started_at   timestamptz[] NOT NULL DEFAULT '{}',
    started      integer[]     NOT NULL DEFAULT '{}',
    pruned_until timestamptz,
    full_until   timestamptz,
    PRIMARY KEY (scope, kind, tenant_id),

    CONSTRAINT rate_windows_scope_valid CHECK (scope IN ('tenant', 'kind', 'kind_tenant'))
);

-- The earliest time a full key opens again (returned by each claim).
CREATE INDEX rate_windows_full_until_idx ON pgwake.rate_windows (full_until)
    WHERE full_until IS NOT NULL;


-- A changed rate limit takes effect at the next claim: the key's window forgets when
-- it was full (and what it pruned, so a longer period counts what the window still
-- holds), a removed limit's windows go, and every waiting worker is woken. Runs as the
-- caller: only pgwake's own roles may write the limits.
CREATE FUNCTION pgwake.rate_limits_after_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    v_scope  text;
    v_kind   text := '';
    v_tenant text := '';
    v_gone   boolean;
BEGIN
    IF TG_TABLE_NAME = 'limits' THEN
        IF TG_OP = 'DELETE' THEN
            v_scope := CASE WHEN OLD.per_tenant THEN 'kind_tenant' ELSE 'kind' END;
            v_kind := OLD.kind;
        ELSE
            v_scope := CASE WHEN NEW.per_tenant THEN 'kind_tenant' ELSE 'kind' END;
            v_kind := NEW.kind;
        END IF;
        v_gone := TG_OP = 'DELETE';
    ELSE
        v_scope := 'tenant';
        IF TG_OP = 'DELETE' THEN
            v_tenant := OLD.tenant_id;
            v_gone := true;
        ELSE
            v_tenant := NEW.tenant_id;
            v_gone := NEW.rate_limit IS NULL;
            IF TG_OP = 'UPDATE' AND (NEW.rate_limit, NEW.rate_period)
                                    IS NOT DISTINCT FROM (OLD.rate_limit, OLD.rate_period) THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    IF v_gone THEN
        DELETE FROM pgwake.rate_windows AS r
         WHERE r.scope = v_scope AND r.kind = v_kind
           AND (v_scope = 'kind_tenant' OR r.tenant_id = v_tenant);
    ELSE
        UPDATE pgwake.rate_windows AS r
           SET full_until = NULL, pruned_until = NULL
         WHERE r.scope = v_scope AND r.kind = v_kind
           AND (v_scope = 'kind_tenant' OR r.tenant_id = v_tenant);
    END IF;
    PERFORM pg_notify('pgwake_jobs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER limits_change_takes_effect_at_once
    AFTER INSERT OR UPDATE OR DELETE ON pgwake.limits
    FOR EACH ROW
    EXECUTE FUNCTION pgwake.rate_limits_after_change();

CREATE TRIGGER tenants_rate_change_takes_effect_at_once
    AFTER INSERT OR UPDATE OF rate_limit, rate_period OR DELETE ON pgwake.tenants
    FOR EACH ROW
    EXECUTE FUNCTION pgwake.rate_limits_after_change();

-- Functions of the claim: rate limits -------------------------------------------------

-- Free starts under one rate limit key, for the claim (see pgwake.rate_windows): the
-- limit minus the jobs started under the key in the period before now().
--
-- Claims under one key are serialised across the fleet by a row lock on its
-- pgwake.rate_windows row (FOR NO KEY UPDATE SKIP LOCKED, created on first use: a
-- claimer that cannot get it starts nothing under the key this round; whoever holds it
-- is serving the key). As in pgwake.tenant_free_slots, the row is read after the lock
-- is taken with a fresh snapshot, so it holds every start recorded by the previous
-- holder, and pgwake.rate_record, in the same transaction, adds this claim's starts
-- before the lock is released.
CREATE FUNCTION pgwake.rate_free(p_scope text, p_kind text, p_tenant_id text,
                                 p_limit integer, p_period interval)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_at     timestamptz[];
    v_n      integer[];
    v_pruned timestamptz;
    v_used   integer;
BEGIN
    SELECT r.started_at, r.started, r.pruned_until INTO v_at, v_n, v_pruned
      FROM pgwake.rate_windows AS r
     WHERE r.scope = p_scope AND r.kind = p_kind AND r.tenant_id = p_tenant_id
       FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM pgwake.rate_windows AS r
                    WHERE r.scope = p_scope AND r.kind = p_kind AND r.tenant_id = p_tenant_id) THEN
            RETURN 0;  -- another claim holds it
        END IF;
        INSERT INTO pgwake.rate_windows (scope, kind, tenant_id)
        VALUES (p_scope, p_kind, p_tenant_id)
        ON CONFLICT DO NOTHING;
        SELECT r.started_at, r.started, r.pruned_until INTO v_at, v_n, v_pruned
          FROM pgwake.rate_windows AS r
         WHERE r.scope = p_scope AND r.kind = p_kind AND r.tenant_id = p_tenant_id
           FOR NO KEY UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN 0;
        END IF;
    END IF;
    IF v_pruned > now() - p_period THEN
        -- Starts this claim would have to count were dropped by a claim whose now()
        -- is later than ours: start nothing, the next claim counts exactly.
        RETURN 0;
    END IF;
    SELECT coalesce(sum(u.n), 0)::integer INTO v_used
      FROM unnest(v_at, v_n) AS u(at, n)
     WHERE u.at > now() - p_period;
    RETURN greatest(p_limit - v_used, 0);
END;
$$;

-- Records p_count jobs started now() under a key whose row this transaction locked
-- (pgwake.rate_free), drops the starts older than the period and a second, and
-- returns when the key opens again if it is full now (NULL when it is not), which it
-- also stores in full_until.
CREATE FUNCTION pgwake.rate_record(p_scope text, p_kind text, p_tenant_id text,
                                   p_count integer, p_limit integer, p_period interval)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_cut    timestamptz := now() - p_period - interval '1 second';
    v_at     timestamptz[];
    v_n      integer[];
    v_pruned timestamptz;
    v_used   integer;
    v_full   timestamptz;
BEGIN
    SELECT coalesce(array_agg(u.at ORDER BY u.at) FILTER (WHERE u.at > v_cut), '{}'),
           coalesce(array_agg(u.n ORDER BY u.at) FILTER (WHERE u.at > v_cut), '{}'),
           max(u.at) FILTER (WHERE u.at <= v_cut)
      INTO v_at, v_n, v_pruned
      FROM pgwake.rate_windows AS r
     CROSS JOIN LATERAL (SELECT s.at, s.n FROM unnest(r.started_at, r.started) AS s(at, n)
                         UNION ALL
                         SELECT now(), p_count) AS u
     WHERE r.scope = p_scope AND r.kind = p_kind AND r.tenant_id = p_tenant_id;
    SELECT coalesce(sum(u.n), 0)::integer INTO v_used
      FROM unnest(v_at, v_n) AS u(at, n)
     WHERE u.at > now() - p_period;
    IF v_used >= p_limit THEN
        -- The oldest start whose expiry leaves fewer than the limit in the window.
        SELECT min(g.at) + p_period INTO v_full
          FROM (SELECT s.at, sum(s.n) OVER (ORDER BY s.at DESC) - s.n AS newer
                  FROM (SELECT u.at, sum(u.n) AS n
                          FROM unnest(v_at, v_n) AS u(at, n)
                         WHERE u.at > now() - p_period
                         GROUP BY u.at) AS s) AS g
         WHERE g.newer < p_limit;
    END IF;
    UPDATE pgwake.rate_windows AS r
       SET started_at = v_at, started = v_n,
           pruned_until = greatest(r.pruned_until, v_pruned),
           full_until = v_full
     WHERE r.scope = p_scope AND r.kind = p_kind AND r.tenant_id = p_tenant_id;
    RETURN v_full;
END;
$$;
