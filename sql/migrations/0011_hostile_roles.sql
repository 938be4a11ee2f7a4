-- pgwake: breaking
-- 0011_hostile_roles: no database role without pgwake's own privileges can cancel, stall
-- or read another tenant's jobs, through any table, view, function, channel or lock.
--
-- Compatible with workers of 0010 for claims and outcomes; workers older than this
-- version take the advisory locks that this migration replaces, so during a rolling
-- deploy an old and a new worker may both lead one round of promotion, retention or
-- schedules (each of those rounds is safe to run twice: rows are locked SKIP LOCKED and
-- schedule slots carry a unique key). Restart every worker after migrating.
--
-- 1. Confinement follows role membership. The policies used to compare current_user by
--    name with pgwake.tenant_roles, so a login that was a member of a confined group
--    role inherited its grants but not its confinement. Now a role is confined when it
--    is a member (directly, through a chain, with or without INHERIT, or by SET ROLE)
--    of any listed role, to the union of their tenants. pgwake.confined_tenants() reads
--    pgwake.tenant_roles as the caller, and row-level security on that table shows each
--    role only the rows of the roles it is a member of, so it answers for the caller
--    only (the old pgwake.confined_tenants(role) answered for any role).
--
-- 2. Cancelling and retrying go through functions that check who asks:
--    pgwake.cancel_job(id) and pgwake.retry_job(id) act as the calling role, which must
--    either have UPDATE on pgwake.jobs and be unconfined, or be confined to the job's
--    tenant. A NOTIFY on pgwake_cancel is only a hint now: the worker stops a job only
--    when the job's row says its cancellation was requested.
--
-- 3. No lock a role without privileges can take stalls anyone else. Advisory locks need
--    no privilege, so the leader locks (maintenance, promotion, retention, schedules)
--    are now row locks on pgwake.leaders and the fleet-wide per-tenant claim lock is a
--    row lock on the tenant's pgwake.tenants row: both need UPDATE on those tables. The
--    insert trigger and pgwake.someone_waits try their marking lock instead of waiting
--    for it (a transaction that cannot mark itself simply notifies), and a worker's
--    liveness lock counts only when the session recorded in pgwake.workers.session_pid
--    holds it.
--
-- 4. Job events carry no free text: {"id", "tenant", "status"} (the kind, which an
--    application writes, and progress messages, which handlers write, are read from the
--    job's row, under row-level security).
--
-- 5. Confined roles read the views (queue_status, failed_jobs, tenant_backlog) with
--    only their own tenants' rows; pgwake.tenants has row-level security to match.

-- 1. Confinement by membership ---------------------------------------------------------

DROP POLICY jobs_confined_to_own_tenants ON pgwake.jobs;
DROP FUNCTION pgwake.confined_tenants(name);

ALTER TABLE pgwake.tenant_roles ENABLE ROW LEVEL SECURITY;

-- Each role sees the rows of the roles it is a member of (for a superuser: all).
CREATE POLICY tenant_roles_of_own_memberships ON pgwake.tenant_roles FOR SELECT
    USING (EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS g
                    WHERE g.rolname = role_name
                      AND pg_catalog.pg_has_role(g.oid, 'MEMBER')));

GRANT SELECT ON pgwake.tenant_roles TO PUBLIC;

-- The tenants the calling role is confined to, or NULL when it is not confined. A role
-- is confined when it is a member of any role listed in pgwake.tenant_roles (itself
-- included), to all those roles' tenants; superusers and BYPASSRLS roles never are.
-- SECURITY INVOKER on purpose: current_user is the caller, and the table's row-level
-- security shows it only its own memberships.
CREATE FUNCTION pgwake.confined_tenants() RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT array_agg(DISTINCT r.tenant_id ORDER BY r.tenant_id)
      FROM pgwake.tenant_roles AS r
      JOIN pg_roles AS g ON g.rolname = r.role_name
     WHERE pg_has_role(g.oid, 'MEMBER')
       AND NOT EXISTS (SELECT 1 FROM pg_roles AS me
                        WHERE me.rolname = current_user AND (me.rolsuper OR me.rolbypassrls));
$$;

-- The scalar subqueries make the function run once per statement, not once per row.
CREATE POLICY jobs_confined_to_own_tenants ON pgwake.jobs
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

ALTER TABLE pgwake.tenants ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenants_confined_to_own_tenants ON pgwake.tenants
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

-- The jobs role p_as may cancel or retry: NULL for every tenant's, else its tenants'.
-- For pgwake's own SECURITY DEFINER functions, which pass the caller's current_user.
-- Raises unless the session may act as p_as (session_user is p_as or a member of it: it
-- could SET ROLE to it), so it answers only about the caller, and unless p_as is
-- confined or may UPDATE pgwake.jobs.
CREATE FUNCTION pgwake.acting_tenants(p_as name) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v_tenants text[];
BEGIN
    IF NOT pg_has_role(session_user, p_as, 'MEMBER') THEN
        RAISE EXCEPTION 'pgwake: session role % may not act as role %', session_user, p_as
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles AS me
                WHERE me.rolname = p_as AND (me.rolsuper OR me.rolbypassrls)) THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(DISTINCT r.tenant_id ORDER BY r.tenant_id) INTO v_tenants
      FROM pgwake.tenant_roles AS r
      JOIN pg_roles AS g ON g.rolname = r.role_name
     WHERE pg_has_role(p_as, g.oid, 'MEMBER');
    IF v_tenants IS NULL AND NOT has_table_privilege(p_as, 'pgwake.jobs', 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied: role % may neither update pgwake.jobs nor is it '
                        'confined to tenants', p_as
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v_tenants;
END;
$$;

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
        'unique_key, timeout) ON pgwake.jobs TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                   'pgwake.tenant_backlog TO %I', p_role);
    EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                   'ON pgwake.tenants TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;

-- Roles confined before this version read the views too.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT DISTINCT r.role_name FROM pgwake.tenant_roles AS r
                    JOIN pg_catalog.pg_roles AS g ON g.rolname = r.role_name LOOP
        EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                       'pgwake.tenant_backlog TO %I', v_role);
        EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                       'ON pgwake.tenants TO %I', v_role);
    END LOOP;
END;
$$;

-- 2. Cancel and retry as the caller -----------------------------------------------------

-- Cancels job p_job_id as role p_as (see pgwake.cancel_job).
CREATE FUNCTION pgwake.job_cancel_as(p_job_id bigint, p_as name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v_tenants text[] := pgwake.acting_tenants(p_as);
    v_tenant  text;
BEGIN
    UPDATE pgwake.jobs
       SET status = 'cancelled', finished_at = now(), last_error = 'cancelled by ' || p_as
     WHERE id = p_job_id AND status IN ('scheduled', 'queued')
       AND (v_tenants IS NULL OR tenant_id = ANY (v_tenants))
    RETURNING tenant_id INTO v_tenant;
    IF v_tenant IS NOT NULL THEN
        PERFORM pgwake.job_event(p_job_id, v_tenant, NULL, 'cancelled');
        RETURN true;
    END IF;
    UPDATE pgwake.jobs
       SET cancel_requested_at = coalesce(cancel_requested_at, now())
     WHERE id = p_job_id AND status = 'running'
       AND (v_tenants IS NULL OR tenant_id = ANY (v_tenants))
    RETURNING tenant_id INTO v_tenant;
    IF v_tenant IS NOT NULL THEN
        -- A hint: the worker checks the row before it stops anything.
        PERFORM pg_notify('pgwake_cancel', p_job_id::text);
        RETURN true;
    END IF;
    RETURN false;
END;
$$;

-- Cancel a job from SQL, as the calling role: one with UPDATE on pgwake.jobs (and not
-- confined) may cancel any job, a confined role only its tenants' jobs. A queued or
-- scheduled job becomes cancelled at once; for a running job the cancellation is
-- recorded in the row (cancel_requested_at), and the worker holding it, told at once
-- by a NOTIFY on pgwake_cancel that it checks against the row (and by its next
-- heartbeat in any case), stops the handler and records the job cancelled, with no
-- retry. Returns true when the job was cancelled or its cancellation requested; false
-- when it had already finished, does not exist, or is not the caller's to cancel.
CREATE OR REPLACE FUNCTION pgwake.cancel_job(job_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pgwake.job_cancel_as(job_id, current_user);
$$;

-- Retries job p_job_id as role p_as (see pgwake.retry_job).
CREATE FUNCTION pgwake.job_retry_as(p_job_id bigint, p_as name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v_tenants text[] := pgwake.acting_tenants(p_as);
    v_tenant  text;
BEGIN
    UPDATE pgwake.jobs
       SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
           result = NULL, progress = NULL, cancel_requested_at = NULL
     WHERE id = p_job_id AND status IN ('failed', 'cancelled')
       AND (v_tenants IS NULL OR tenant_id = ANY (v_tenants))
    RETURNING tenant_id INTO v_tenant;
    IF v_tenant IS NULL THEN
        RETURN false;
    END IF;
    PERFORM pgwake.job_event(p_job_id, v_tenant, NULL, 'queued');
    IF pgwake.someone_waits(0) THEN
        PERFORM pg_notify('pgwake_jobs', '');
    END IF;
    RETURN true;
END;
$$;

-- Run a failed or cancelled job again, as the calling role (the same rule as
-- pgwake.cancel_job): it goes back to queued, due now, with its attempts reset;
-- last_error is kept. Returns false when the job is not failed or cancelled, does not
-- exist, or is not the caller's to retry. A job whose unique_key is taken by an active
-- job fails with the unique violation of jobs_unique_key_idx.
CREATE FUNCTION pgwake.retry_job(job_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pgwake.job_retry_as(job_id, current_user);
$$;

-- 3. No lock anyone can take stalls the fleet -------------------------------------------

-- One row per leader role of a round; the leader of a round holds its row locked (FOR
-- NO KEY UPDATE SKIP LOCKED) until its transaction ends. Row locks need UPDATE on this
-- table, which only pgwake's own roles have, where advisory locks need no privilege.
CREATE TABLE pgwake.leaders (
    name text PRIMARY KEY,
    CONSTRAINT leaders_name_known
        CHECK (name IN ('maintenance', 'promotion', 'retention', 'schedules'))
);

INSERT INTO pgwake.leaders (name)
VALUES ('maintenance'), ('promotion'), ('retention'), ('schedules');

-- Free fleet-wide slots of a capped tenant, for the claim.
--
-- Claims for one capped tenant are serialised across the fleet by a row lock on the
-- tenant's pgwake.tenants row (FOR NO KEY UPDATE SKIP LOCKED: a claimer that cannot get
-- it skips the tenant this round; whoever holds it is serving the tenant). Taking it
-- needs UPDATE on pgwake.tenants, so no application role can hold a tenant's claims
-- back. The count runs after the lock is taken, and since this function is VOLATILE
-- its query gets a fresh snapshot under READ COMMITTED: it sees every claim committed
-- by the previous holder of the lock. So the count plus what this claim takes never
-- exceeds the cap. The lock is released when the claiming statement's transaction ends.
CREATE OR REPLACE FUNCTION pgwake.tenant_free_slots(p_tenant_id text, p_cap integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM pgwake.tenants AS t
      WHERE t.tenant_id = p_tenant_id
        FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    RETURN greatest(
        p_cap - (SELECT count(*)::integer
                   FROM pgwake.jobs
                  WHERE tenant_id = p_tenant_id AND status = 'running'),
        0);
END;
$$;

-- The marking lock (1885828967, 100 + n) is taken in shared mode by pgwake, never in
-- exclusive mode: a transaction that cannot take it at once (some other session holds
-- it exclusively) does not wait, it treats the key as "someone waits" and notifies.
CREATE OR REPLACE FUNCTION pgwake.someone_waits(p_what integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(1885828967, 100 + p_what) THEN
        RETURN true;  -- held exclusively by a session that is not pgwake: notify
    END IF;
    IF current_setting('pgwake.waiting_' || p_what, true) = 'on' THEN
        RETURN true;  -- this session waits (its own lock never conflicts with itself)
    END IF;
    IF pg_try_advisory_lock(1885828967, p_what) THEN
        PERFORM pg_advisory_unlock(1885828967, p_what);
        RETURN false;
    END IF;
    RETURN true;
END;
$$;

-- Starting to follow waits at most about a second for the waiting lock: it is busy only
-- for an instant while a transaction looks, unless a session that is not pgwake holds
-- it exclusively.
CREATE OR REPLACE FUNCTION pgwake.follow_events() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_tries integer := 0;
BEGIN
    WHILE pgwake.start_waiting(1) IS NULL LOOP
        v_tries := v_tries + 1;
        IF v_tries > 1000 THEN
            RAISE EXCEPTION 'pgwake.follow_events: the events lock (1885828967, 1) is held '
                            'exclusively by another session; try again'
                USING ERRCODE = 'lock_not_available';
        END IF;
        PERFORM pg_sleep(0.001);
    END LOOP;
    LISTEN pgwake_events;
END;
$$;

CREATE OR REPLACE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_events boolean := false;
BEGIN
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885828967, 100) THEN
        -- Held exclusively by a session that is not pgwake: notify rather than wait.
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    ELSIF pg_catalog.current_setting('pgwake.inserted_due_later', true) = 'on' THEN
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    ELSIF pg_catalog.current_setting('pgwake.waiting_0', true) = 'on' THEN
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    ELSIF pg_catalog.pg_try_advisory_lock(1885828967, 0) THEN
        PERFORM pg_catalog.pg_advisory_unlock(1885828967, 0);  -- nobody waits
    ELSE
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    END IF;
    IF coalesce(pg_catalog.current_setting('pgwake.job_events', true), '') <> 'off' THEN
        IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885828967, 101) THEN
            v_events := true;
        ELSIF pg_catalog.current_setting('pgwake.waiting_1', true) = 'on' THEN
            v_events := true;
        ELSIF pg_catalog.pg_try_advisory_lock(1885828967, 1) THEN
            PERFORM pg_catalog.pg_advisory_unlock(1885828967, 1);  -- nobody follows
        ELSE
            v_events := true;
        END IF;
    END IF;
    IF v_events THEN
        PERFORM pgwake.job_events(array_agg(n.id), array_agg(n.tenant_id),
                                  array_agg(n.kind), array_agg(n.status))
           FROM new_jobs AS n;
    END IF;
    RETURN NULL;
END;
$$;

-- The backend that holds the worker's liveness lock (its heartbeat session), so that a
-- lock on the same key held by any other session does not count.
ALTER TABLE pgwake.workers ADD COLUMN session_pid integer;

-- 4. Events without free text -----------------------------------------------------------

-- p_kind is kept for the callers' sake and not sent: a kind is text an application
-- wrote, and followers of other tenants may not read it.
CREATE OR REPLACE FUNCTION pgwake.job_event(p_id bigint, p_tenant_id text, p_kind text,
                                            p_status text)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pg_notify('pgwake_events',
                     json_build_object('id', p_id, 'tenant', p_tenant_id,
                                       'status', p_status)::text)
     WHERE pgwake.events_wanted();
$$;

CREATE OR REPLACE FUNCTION pgwake.job_events(p_ids bigint[], p_tenant_ids text[],
                                             p_kinds text[], p_statuses text[])
RETURNS integer
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT CASE WHEN cardinality(p_ids) > 0 AND pgwake.events_wanted() THEN
               (SELECT count(pg_notify('pgwake_events',
                                       json_build_object('id', e.id, 'tenant', e.tenant_id,
                                                         'status', e.status)::text))::integer
                  FROM unnest(p_ids, p_tenant_ids, p_statuses) AS e(id, tenant_id, status))
           ELSE 0
           END;
$$;
