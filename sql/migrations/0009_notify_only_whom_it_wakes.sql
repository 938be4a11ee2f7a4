-- pgwake: breaking
-- 0009_notify_only_whom_it_wakes: NOTIFY only when a session waits for it.
--
-- A transaction that sends a NOTIFY holds a database-wide lock from its commit until
-- the commit is on disk, so transactions that notify commit one at a time instead of
-- together: eight connections inserting one job each, every one of them notifying, ran
-- at about a third of the rate without the trigger. Most of those notifications wake
-- nobody: a worker with a backlog claims again without being told, and nobody may be
-- following job events at all.
--
-- So a session that wants to be woken says so by holding a session-level advisory lock
-- in shared mode, (1885828967, 0) for a worker waiting for new jobs and (1885828967, 1)
-- for a session following job events; pgwake.someone_waits(n) sees whether anyone does
-- by trying that lock in exclusive mode for an instant. Waking is still never lost: a
-- session that starts waiting (pgwake.start_waiting) first takes its lock, then lists
-- the transactions that looked before it did. Each looker marks itself with a
-- transaction-level shared lock on (1885828967, 100 + n) before it looks, so it is on
-- that list until it commits or rolls back, and the waiter looks for new work once they
-- all have. Whoever looks after the lock was taken sees it and notifies.

-- True when some session (this one included) waits to be woken by notifications of
-- kind p_what (0: new jobs, 1: job events). Marks the calling transaction as one that
-- looked, for pgwake.start_waiting.
CREATE FUNCTION pgwake.someone_waits(p_what integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1885828967, 100 + p_what);
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

-- Start waiting for notifications of kind p_what in this session: takes the session's
-- shared lock and returns the virtual transaction ids of the transactions that looked
-- (pgwake.someone_waits) before and have not ended yet. The caller looks for work once
-- none of them is left (pgwake.transactions_open); everything committed later notifies.
-- Returns NULL when the lock is taken in exclusive mode at this instant (someone is
-- looking): try again.
CREATE FUNCTION pgwake.start_waiting(p_what integer) RETURNS text[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    IF current_setting('pgwake.waiting_' || p_what, true) IS DISTINCT FROM 'on' THEN
        IF NOT pg_try_advisory_lock_shared(1885828967, p_what) THEN
            RETURN NULL;
        END IF;
        PERFORM set_config('pgwake.waiting_' || p_what, 'on', false);
    END IF;
    RETURN ARRAY(
        SELECT l.virtualtransaction
          FROM pg_locks AS l
         WHERE l.locktype = 'advisory'
           AND l.database = (SELECT d.oid FROM pg_database AS d
                              WHERE d.datname = current_database())
           AND l.classid = 1885828967::oid
           AND l.objid = (100 + p_what)::oid
           AND l.objsubid = 2
           AND l.granted
           AND l.pid <> pg_backend_pid());
END;
$$;

-- Which of the virtual transactions p_ids are still open.
CREATE FUNCTION pgwake.transactions_open(p_ids text[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT ARRAY(SELECT l.virtualxid
                   FROM pg_locks AS l
                  WHERE l.locktype = 'virtualxid' AND l.virtualxid = ANY (p_ids));
$$;

-- Stop waiting for notifications of kind p_what in this session.
CREATE FUNCTION pgwake.stop_waiting(p_what integer) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    IF current_setting('pgwake.waiting_' || p_what, true) = 'on' THEN
        PERFORM pg_advisory_unlock_shared(1885828967, p_what);
        PERFORM set_config('pgwake.waiting_' || p_what, 'off', false);
    END IF;
END;
$$;

-- For applications: follow job events in this session (LISTEN pgwake_events, and say
-- so, so that status changes are announced). Changes that commit after it returns are
-- announced; read a job's row after following to know where it stands.
CREATE FUNCTION pgwake.follow_events() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    WHILE pgwake.start_waiting(1) IS NULL LOOP
        PERFORM pg_sleep(0.001);
    END LOOP;
    LISTEN pgwake_events;
END;
$$;

-- For applications: stop following job events in this session.
CREATE FUNCTION pgwake.unfollow_events() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
BEGIN
    UNLISTEN pgwake_events;
    PERFORM pgwake.stop_waiting(1);
END;
$$;

-- Job events are sent only when job events are on for the session (pgwake.job_events)
-- and some session follows them.
CREATE FUNCTION pgwake.events_wanted() RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT coalesce(current_setting('pgwake.job_events', true), '') <> 'off'
           AND pgwake.someone_waits(1);
$$;

CREATE OR REPLACE FUNCTION pgwake.job_event(p_id bigint, p_tenant_id text, p_kind text,
                                            p_status text)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pg_notify('pgwake_events',
                     json_build_object('id', p_id, 'tenant', p_tenant_id, 'kind', p_kind,
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
                                                         'kind', e.kind,
                                                         'status', e.status)::text))::integer
                  FROM unnest(p_ids, p_tenant_ids, p_kinds, p_statuses)
                           AS e(id, tenant_id, kind, status))
           ELSE 0
           END;
$$;

-- A job inserted with run_at still ahead is scheduled: a row trigger, called only for
-- such rows (its WHEN is checked without calling anything), sets its status and notes
-- for the statement trigger below that a job is due later.
CREATE FUNCTION pgwake.jobs_before_insert_due_later() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    NEW.status := 'scheduled';
    PERFORM set_config('pgwake.inserted_due_later', 'on', true);
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_schedule_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.run_at > now())
    EXECUTE FUNCTION pgwake.jobs_before_insert_due_later();

-- After each INSERT statement: one NOTIFY when a worker waits for new jobs, and always
-- when a job is due later (the promoters sleep until the earliest due job); the job
-- events of the new rows while a session follows them. The steps of
-- pgwake.someone_waits are written out here rather than called: this runs for every
-- insert statement, and each call would cost about as much as the steps themselves.
-- No SECURITY DEFINER: it changes no row, so an application role needs only INSERT.
CREATE OR REPLACE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_events boolean := false;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885828967, 100);
    IF pg_catalog.current_setting('pgwake.inserted_due_later', true) = 'on' THEN
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    ELSIF pg_catalog.current_setting('pgwake.waiting_0', true) = 'on' THEN
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    ELSIF pg_catalog.pg_try_advisory_lock(1885828967, 0) THEN
        PERFORM pg_catalog.pg_advisory_unlock(1885828967, 0);  -- nobody waits
    ELSE
        PERFORM pg_catalog.pg_notify('pgwake_jobs', '');
    END IF;
    IF coalesce(pg_catalog.current_setting('pgwake.job_events', true), '') <> 'off' THEN
        PERFORM pg_catalog.pg_advisory_xact_lock_shared(1885828967, 101);
        IF pg_catalog.current_setting('pgwake.waiting_1', true) = 'on' THEN
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
