-- pgwake: breaking
-- 0004_liveness_cancel_events: liveness locks for fast recovery of dead workers,
-- cancellation of running jobs, and the job events channel.

-- Every worker holds a session-level advisory lock, pg_advisory_lock(1885828962,
-- lock_key), on a connection of its own for as long as it runs. When its process dies
-- the connection closes and the lock vanishes with it; the maintenance leader sees that
-- in pg_locks within seconds and recovers the worker's jobs (queries.sql:
-- workers_lost). The keys come from a cycling sequence, so they are unique among the
-- registered workers.
CREATE SEQUENCE pgwake.worker_lock_keys AS integer MINVALUE 1 CYCLE;

ALTER TABLE pgwake.workers
    ADD COLUMN lock_key integer NOT NULL DEFAULT nextval('pgwake.worker_lock_keys');

ALTER SEQUENCE pgwake.worker_lock_keys OWNED BY pgwake.workers.lock_key;

ALTER TABLE pgwake.workers ADD CONSTRAINT workers_lock_key_unique UNIQUE (lock_key);

-- Set when someone asks to cancel a running job; the worker holding it stops the
-- handler and records the job cancelled.
ALTER TABLE pgwake.jobs ADD COLUMN cancel_requested_at timestamptz;

-- Job events: one NOTIFY on channel pgwake_events per change of a job's status, with a
-- JSON payload {"id", "tenant", "kind", "status"}. Switched off for a session, role or
-- database with the setting pgwake.job_events = 'off' (for example
-- ALTER DATABASE app SET pgwake.job_events = 'off'); on when unset.
CREATE FUNCTION pgwake.job_event(p_id bigint, p_tenant_id text, p_kind text, p_status text)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pg_notify('pgwake_events',
                     json_build_object('id', p_id, 'tenant', p_tenant_id, 'kind', p_kind,
                                       'status', p_status)::text)
     WHERE coalesce(current_setting('pgwake.job_events', true), '') <> 'off';
$$;

-- The insert trigger also announces each new job (queued or scheduled).
CREATE OR REPLACE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgwake AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_jobs WHERE status = 'queued' AND run_at > now()) THEN
        UPDATE pgwake.jobs AS j
           SET status = 'scheduled'
          FROM new_jobs AS n
         WHERE j.id = n.id
           AND n.status = 'queued'
           AND n.run_at > now();
    END IF;
    PERFORM pg_notify('pgwake_jobs', '');
    IF coalesce(current_setting('pgwake.job_events', true), '') <> 'off' THEN
        PERFORM pgwake.job_event(n.id, n.tenant_id, n.kind,
                                 CASE WHEN n.status = 'queued' AND n.run_at > now()
                                      THEN 'scheduled' ELSE n.status END)
           FROM new_jobs AS n;
    END IF;
    RETURN NULL;
END;
$$;

-- Cancel a job from SQL. A queued or scheduled job becomes cancelled at once; for a
-- running job the cancellation is requested: the worker holding it is told at once
-- (NOTIFY pgwake_cancel) and also sees the request with its next heartbeat, stops the
-- handler and records the job cancelled, with no retry. Returns true when the job was
-- cancelled or its cancellation requested; false when it had already finished (or
-- does not exist).
CREATE OR REPLACE FUNCTION pgwake.cancel_job(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    found_status text;
    found_tenant text;
    found_kind   text;
BEGIN
    UPDATE pgwake.jobs
       SET status = 'cancelled', finished_at = now(), last_error = 'cancelled'
     WHERE id = job_id AND status IN ('scheduled', 'queued')
    RETURNING status, tenant_id, kind INTO found_status, found_tenant, found_kind;
    IF found_status IS NOT NULL THEN
        PERFORM pgwake.job_event(job_id, found_tenant, found_kind, 'cancelled');
        RETURN true;
    END IF;
    UPDATE pgwake.jobs
       SET cancel_requested_at = coalesce(cancel_requested_at, now())
     WHERE id = job_id AND status = 'running'
    RETURNING status INTO found_status;
    IF found_status IS NOT NULL THEN
        PERFORM pg_notify('pgwake_cancel', job_id::text);
        RETURN true;
    END IF;
    RETURN false;
END;
$$;
