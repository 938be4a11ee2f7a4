-- pgwake: compatible
-- 0016_notify_ready_job_id: an INSERT statement that adds exactly one ready job, while a
-- worker waits, notifies the claimers with that job's id as the payload ('' as before
-- for any other statement). A waiting worker can then claim that one job by its
-- primary key (job_claim_notified) instead of walking the tenants: the wake-up of an
-- idle worker, the most common start of a job, costs a small statement instead of the
-- whole claim.
--
-- The payload is a hint, never trusted: anyone may NOTIFY this channel with any text.
-- The claim by id checks everything the full claim checks and takes the job only when
-- the full claim would take it first; otherwise the worker runs the full claim.
--
-- Compatible: workers of 0015 treat every payload but 'later' as "ready jobs", as they
-- treated ''.

CREATE OR REPLACE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_events boolean := false;
    v_notify boolean := false;
    v_ids bigint[];
    v_ready boolean;
    v_payload text := '';
BEGIN
    IF pg_catalog.current_setting('pgwake.inserted_due_later', true) = 'on' THEN
        -- The promoters sleep until the earliest due job: this one may be sooner.
        PERFORM pg_catalog.pg_notify('pgwake_jobs', 'later');
    END IF;
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1885828967, 100) THEN
        -- Held exclusively by a session that is not pgwake: notify rather than wait.
        v_notify := true;
    ELSIF pg_catalog.current_setting('pgwake.waiting_0', true) = 'on' THEN
        v_notify := true;
    ELSIF pg_catalog.pg_try_advisory_lock(1885828967, 0) THEN
        PERFORM pg_catalog.pg_advisory_unlock(1885828967, 0);  -- nobody waits
    ELSE
        v_notify := true;
    END IF;
    IF v_notify THEN
        -- At most two rows are read, whatever the statement inserted: one ready job is
        -- named by its id, anything else is ''.
        SELECT array_agg(n.id), bool_and(n.status = 'queued')
          INTO v_ids, v_ready
          FROM (SELECT n.id, n.status FROM new_jobs AS n LIMIT 2) AS n;
        IF pg_catalog.cardinality(v_ids) = 1 AND v_ready THEN
            v_payload := v_ids[1]::text;
        END IF;
        PERFORM pg_catalog.pg_notify('pgwake_jobs', v_payload);
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
