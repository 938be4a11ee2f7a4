-- pgwake: compatible
-- 0012_wake_promoters_apart: an insert of a job due later notifies 'later' on
-- pgwake_jobs, and only that wakes the promoters; a ready job's notification ('')
-- wakes only the claimers. Before, every notification woke both, so each insert a
-- waiting worker was told of made every worker run a promotion query beside its claim,
-- on the one moment that decides how soon the job starts.
--
-- Compatible: workers of 0011 wake both loops on any notification, 'later' included;
-- the notification for ready jobs is the one they had.

CREATE OR REPLACE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_events boolean := false;
BEGIN
    IF pg_catalog.current_setting('pgwake.inserted_due_later', true) = 'on' THEN
        -- The promoters sleep until the earliest due job: this one may be sooner.
        PERFORM pg_catalog.pg_notify('pgwake_jobs', 'later');
    END IF;
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885828967, 100) THEN
        -- Held exclusively by a session that is not pgwake: notify rather than wait.
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
