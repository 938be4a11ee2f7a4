-- pgwake: compatible
-- 0017_job_dependencies: a job may depend on other jobs of its tenant. An application
-- inserts it with depends_on (bigint[]); while any of those jobs has not succeeded it
-- is in a seventh status, waiting, which no claim reads. When the last of them
-- succeeds, the statement that writes that outcome makes it queued (or scheduled, when
-- its run_at is still ahead) and wakes the claimers. When one of them fails for good
-- or is cancelled, the waiting job is cancelled with a last_error naming that job,
-- unless it was inserted with run_anyway = true: it then runs once every job it
-- depends on has finished, whatever their outcome.
--
-- At INSERT (a row trigger, called only for rows with depends_on) a dependency must be
-- a job that exists, in the same tenant: rows inserted before it, including those
-- earlier in the same statement. One that does not exist, or belongs to another tenant,
-- is refused with the same message (a confined role learns nothing of other tenants),
-- and so is one that already failed or was cancelled (unless run_anyway). depends_on
-- cannot be changed afterwards (a trigger on UPDATE OF depends_on only). Every edge
-- therefore points to a job that existed before its dependent, so insertion order is a
-- topological order and no cycle can form.
--
-- Who waits for a job is found through jobs_waiting_depends_on_idx (GIN on depends_on,
-- waiting jobs only). A waiting job's open dependencies are counted at insert
-- (waiting_for) and then in a narrow row of pgwake.job_waits; a finished dependency
-- takes one off under that row's lock, and only when the count reaches 0 are all its
-- dependencies read again (pgwake.jobs_recheck_waiting), so a fan-in of n jobs costs
-- O(n) in all, not O(n^2). The count is only a hint: the recheck decides, and the
-- maintenance leader rechecks every waiting job in turn (pgwake.jobs_sweep_waiting),
-- which settles a job whose dependency finished while its inserting transaction was
-- still open (the finishing statement could not see it).
--
-- Compatible with workers of 0016: their claim reads only queued jobs, they never read
-- the new columns, and nothing they insert has depends_on. A worker of 0016 writes
-- outcomes without settling the jobs that wait for them: until every worker runs this
-- version, such a job is settled by the sweep of a leader of this version (within a
-- maintenance round or a few) instead of at once.
--
-- unique_key cannot be combined with depends_on (jobs_depends_on_without_unique_key):
-- a waiting job does not hold its key, and releasing it could then collide with the
-- job that does in the statement that writes another job's outcome.

-- Table pgwake.jobs: the columns ------------------------------------------------------

ALTER TABLE pgwake.jobs
    ADD COLUMN depends_on  bigint[],
    ADD COLUMN run_anyway  boolean NOT NULL DEFAULT false,
    ADD COLUMN waiting_for integer;

ALTER TABLE pgwake.jobs DROP CONSTRAINT jobs_status_valid;
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_status_valid
    CHECK (status IN ('waiting', 'scheduled', 'queued', 'running', 'succeeded', 'failed',
                      'cancelled'));
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_depends_on_at_most_10000
    CHECK (depends_on IS NULL
           OR (cardinality(depends_on) <= 10000 AND coalesce(array_ndims(depends_on), 1) = 1));
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_depends_on_without_nulls
    CHECK (depends_on IS NULL OR array_position(depends_on, NULL) IS NULL);
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_depends_on_without_unique_key
    CHECK (depends_on IS NULL OR cardinality(depends_on) = 0 OR unique_key IS NULL);
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_waiting_has_dependencies
    CHECK (status <> 'waiting' OR cardinality(depends_on) > 0);

COMMENT ON TABLE pgwake.jobs IS
    'pgwake job queue. Apps INSERT (tenant_id, kind, payload[, priority, run_at, max_attempts, unique_key, unique_for, timeout, depends_on, run_anyway]); everything else belongs to the worker.';

-- Who waits for a job: waiting jobs only, so a job that was released costs nothing.
-- Without GIN's pending list (fastupdate): every search reads the whole list, so after a
-- fan-in's insert each settling probe read thousands of entries (a DAG of 10,000 jobs
-- ran at about 1,100 jobs/s); entries go straight into the tree instead.
CREATE INDEX jobs_waiting_depends_on_idx ON pgwake.jobs USING gin (depends_on)
    WITH (fastupdate = off)
    WHERE status = 'waiting';

-- Waiting jobs in id order: the sweep, the views and the metrics.
CREATE INDEX jobs_waiting_idx ON pgwake.jobs (id) WHERE status = 'waiting';

-- Table pgwake.job_waits: what a waiting job still waits for ----------------------------

-- How many dependencies of a waiting job are still open, as the statements that
-- finished the others counted them (a hint: pgwake.jobs_recheck_waiting decides). Kept
-- apart from pgwake.jobs so that counting a finished dependency updates this narrow
-- row, not the job's row: an update of the job's row that cannot stay on its page
-- writes every entry of its depends_on into jobs_waiting_depends_on_idx again, which
-- for a fan-in of n jobs made the n outcomes cost O(n^2). Its row lock serialises the
-- settlers of one waiting job. Created by the first settler (from jobs.waiting_for, the
-- count at insert), deleted when the job is released or cancelled here (rows of jobs
-- that left waiting otherwise go with the sweep). Only pgwake's own roles read or
-- write it: it is granted to no other role (as pgwake.rate_windows), and it has no
-- row-level security, so a worker role granted what the fleet needs writes it too.
CREATE TABLE pgwake.job_waits (
    job_id bigint  PRIMARY KEY,
    open   integer NOT NULL
);

-- Functions: settling the jobs that wait ----------------------------------------------

-- Reads again every dependency of the waiting jobs p_ids, and settles each: released
-- (queued, or scheduled when its run_at is still ahead; run_at becomes at least now(),
-- so the wait for its dependencies does not count as time in the queue) when every
-- dependency succeeded (with run_anyway: finished); cancelled, naming the lowest
-- dependency that failed, was cancelled or no longer exists (not with run_anyway);
-- else its pgwake.job_waits row gets the count of open dependencies. Locks their
-- job_waits rows, then the jobs, each in id order (the order every settler takes), and
-- reads with a fresh snapshot after, so a concurrent settler either finished before
-- (and is seen) or waits for this one and counts after it. Wakes the claimers (when one
-- waits) and the promoters, and sends the job events. Returns the ids it cancelled
-- (their own dependents are the caller's to settle).
CREATE FUNCTION pgwake.jobs_recheck_waiting(p_ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_cancelled bigint[];
    v_queued    boolean;
    v_later     boolean;
BEGIN
    IF NOT has_table_privilege('pgwake.jobs', 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied: settling waiting jobs needs UPDATE on pgwake.jobs'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM 1 FROM pgwake.job_waits AS c
      WHERE c.job_id = ANY (p_ids)
      ORDER BY c.job_id
        FOR NO KEY UPDATE;
    PERFORM 1 FROM pgwake.jobs AS w
      WHERE w.id = ANY (p_ids) AND w.status = 'waiting'
      ORDER BY w.id
        FOR NO KEY UPDATE;
    WITH state AS (
        SELECT w.id,
               count(DISTINCT d.dep) FILTER (
                   WHERE j.status IS DISTINCT FROM 'succeeded'
                     AND NOT (w.run_anyway AND (j.id IS NULL
                                                OR j.status IN ('failed', 'cancelled'))))
                   AS open,
               min(d.dep) FILTER (
                   WHERE NOT w.run_anyway
                     AND (j.id IS NULL OR j.status IN ('failed', 'cancelled'))) AS broken_by
          FROM pgwake.jobs AS w
         CROSS JOIN LATERAL unnest(w.depends_on) AS d(dep)
          LEFT JOIN pgwake.jobs AS j ON j.id = d.dep
         WHERE w.id = ANY (p_ids) AND w.status = 'waiting'
         GROUP BY w.id
    ),
    settled AS (
        UPDATE pgwake.jobs AS w
           SET status = CASE WHEN s.broken_by IS NOT NULL THEN 'cancelled'
                             WHEN w.run_at > now() THEN 'scheduled'
                             ELSE 'queued' END,
               run_at = CASE WHEN s.broken_by IS NULL THEN greatest(w.run_at, now())
                             ELSE w.run_at END,
               finished_at = CASE WHEN s.broken_by IS NOT NULL THEN now() END,
               last_error = CASE WHEN s.broken_by IS NULL THEN w.last_error
                                 ELSE 'cancelled: depends on job ' || s.broken_by || ', which '
                                      || coalesce((SELECT CASE b.status WHEN 'failed' THEN 'failed'
                                                                        ELSE 'was cancelled' END
                                                     FROM pgwake.jobs AS b
                                                    WHERE b.id = s.broken_by),
                                                  'no longer exists') END
          FROM state AS s
         WHERE w.id = s.id AND w.status = 'waiting' AND (s.broken_by IS NOT NULL OR s.open = 0)
        RETURNING w.id, w.tenant_id, w.kind, w.status
    ),
    counted AS (
        INSERT INTO pgwake.job_waits AS c (job_id, open)
        SELECT s.id, s.open FROM state AS s WHERE s.broken_by IS NULL AND s.open > 0
        ON CONFLICT (job_id) DO UPDATE SET open = excluded.open
        RETURNING 1
    ),
    forgotten AS (
        DELETE FROM pgwake.job_waits AS c
         WHERE c.job_id IN (SELECT s.id FROM settled AS s)
        RETURNING 1
    ),
    events AS (
        SELECT pgwake.job_events(array_agg(s.id), array_agg(s.tenant_id), array_agg(s.kind),
                                 array_agg(s.status)) AS sent
          FROM settled AS s
    )
    SELECT array_agg(s.id) FILTER (WHERE s.status = 'cancelled'),
           coalesce(bool_or(s.status = 'queued'), false),
           coalesce(bool_or(s.status = 'scheduled'), false)
      INTO v_cancelled, v_queued, v_later
      FROM settled AS s
     WHERE (SELECT count(*) FROM events) >= 0
       AND (SELECT count(*) FROM counted) >= 0
       AND (SELECT count(*) FROM forgotten) >= 0;
    IF v_queued AND pgwake.someone_waits(0) THEN
        PERFORM pg_notify('pgwake_jobs', '');
    END IF;
    IF v_later THEN
        -- The promoters sleep until the earliest due job: this one may be sooner.
        PERFORM pg_notify('pgwake_jobs', 'later');
    END IF;
    RETURN coalesce(v_cancelled, '{}');
END;
$$;

-- Settles the jobs waiting for p_ids, jobs that have just finished (others in p_ids are
-- ignored): each waiting job counts its dependencies among them that are resolved
-- (succeeded; with run_anyway, finished) off its pgwake.job_waits row, under that row's
-- lock (taken in id order); those whose count reaches 0, and those a failed or
-- cancelled dependency breaks, are rechecked (pgwake.jobs_recheck_waiting). A job
-- cancelled so settles its own dependents in turn. Returns how many waiting jobs were
-- released or cancelled. Called by every statement that finishes jobs (outcomes,
-- recovery, put-backs, cancel); costs one probe of jobs_waiting_idx when no job waits,
-- and one probe of jobs_waiting_depends_on_idx per finished job otherwise (the index
-- answers containment exactly: a waiting job's depends_on, perhaps long, is not read).
CREATE FUNCTION pgwake.jobs_settle_dependents(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_done    bigint[] := p_ids;
    v_hit      bigint[];
    v_resolved integer[];
    v_broken   boolean[];
    v_check    bigint[];
    v_settled integer := 0;
BEGIN
    IF NOT has_table_privilege('pgwake.jobs', 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied: settling waiting jobs needs UPDATE on pgwake.jobs'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF cardinality(v_done) IS NOT DISTINCT FROM 0 OR v_done IS NULL
       OR NOT EXISTS (SELECT 1 FROM pgwake.jobs AS w WHERE w.status = 'waiting') THEN
        RETURN 0;
    END IF;
    WHILE cardinality(v_done) > 0 LOOP
        SELECT array_agg(h.id ORDER BY h.id), array_agg(h.resolved ORDER BY h.id),
               array_agg(h.broken ORDER BY h.id)
          INTO v_hit, v_resolved, v_broken
          FROM (SELECT w.id,
                       count(DISTINCT d.id) FILTER (WHERE d.status = 'succeeded'
                                                       OR w.run_anyway)::integer AS resolved,
                       coalesce(bool_or(d.status <> 'succeeded' AND NOT w.run_anyway), false)
                           AS broken
                  FROM (SELECT j.id, j.status
                          FROM pgwake.jobs AS j
                         WHERE j.id = ANY (v_done)
                           AND j.status IN ('succeeded', 'failed', 'cancelled')) AS d
                 CROSS JOIN LATERAL (SELECT x.id, x.run_anyway
                                       FROM pgwake.jobs AS x
                                      WHERE x.status = 'waiting'
                                        AND x.depends_on @> ARRAY[d.id]) AS w
                 GROUP BY w.id) AS h;
        EXIT WHEN v_hit IS NULL;
        INSERT INTO pgwake.job_waits (job_id, open)
        SELECT w.id, w.waiting_for
          FROM pgwake.jobs AS w
         WHERE w.id = ANY (v_hit) AND w.status = 'waiting'
        ON CONFLICT (job_id) DO NOTHING;
        PERFORM 1 FROM pgwake.job_waits AS c
          WHERE c.job_id = ANY (v_hit)
          ORDER BY c.job_id
            FOR NO KEY UPDATE;
        WITH counted AS (
            UPDATE pgwake.job_waits AS c
               SET open = c.open - h.resolved
              FROM unnest(v_hit, v_resolved) AS h(id, resolved)
             WHERE c.job_id = h.id
            RETURNING c.job_id, c.open
        )
        SELECT array_agg(c.job_id) INTO v_check FROM counted AS c WHERE c.open <= 0;
        -- A broken job is rechecked whatever its count (the recheck reads the rows).
        v_check := ARRAY(SELECT DISTINCT x
                           FROM unnest(coalesce(v_check, '{}')
                                       || ARRAY(SELECT h.id FROM unnest(v_hit, v_broken)
                                                             AS h(id, broken)
                                                 WHERE h.broken)) AS x);
        EXIT WHEN cardinality(v_check) = 0;
        v_done := pgwake.jobs_recheck_waiting(v_check);
        v_settled := v_settled + (SELECT count(*)::integer FROM pgwake.jobs AS j
                                   WHERE j.id = ANY (v_check) AND j.status <> 'waiting');
    END LOOP;
    RETURN v_settled;
END;
$$;

-- One step of the maintenance leader's sweep: the next p_limit waiting jobs after id
-- p_after, of which those whose dependencies have all resolved or one is broken are
-- rechecked (pgwake.jobs_recheck_waiting), and the dependents of the jobs that cancels
-- settled. The candidates are found without locking anything. Returns the last id
-- looked at (0 when the sweep has reached the end: start again from 0) and how many
-- jobs it released or cancelled.
CREATE FUNCTION pgwake.jobs_sweep_waiting(p_after bigint, p_limit integer,
                                          OUT last_id bigint, OUT settled integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog AS $$
DECLARE
    v_ids       bigint[];
    v_due       bigint[];
    v_cancelled bigint[];
BEGIN
    IF NOT has_table_privilege('pgwake.jobs', 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied: settling waiting jobs needs UPDATE on pgwake.jobs'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT array_agg(w.id ORDER BY w.id) INTO v_ids
      FROM (SELECT w.id FROM pgwake.jobs AS w
             WHERE w.status = 'waiting' AND w.id > p_after
             ORDER BY w.id
             LIMIT p_limit) AS w;
    last_id := CASE WHEN cardinality(v_ids) = p_limit THEN v_ids[p_limit] ELSE 0 END;
    settled := 0;
    -- Counts of jobs that left waiting other than through a recheck (a cancel).
    DELETE FROM pgwake.job_waits AS c
     WHERE c.job_id IN (SELECT g.job_id FROM pgwake.job_waits AS g
                         WHERE NOT EXISTS (SELECT 1 FROM pgwake.jobs AS j
                                            WHERE j.id = g.job_id AND j.status = 'waiting')
                         LIMIT p_limit);
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(w.id) INTO v_due
      FROM pgwake.jobs AS w
     WHERE w.id = ANY (v_ids) AND w.status = 'waiting'
       AND NOT EXISTS (
           SELECT 1
             FROM unnest(w.depends_on) AS d(dep)
             LEFT JOIN pgwake.jobs AS j ON j.id = d.dep
            WHERE j.status IN ('waiting', 'scheduled', 'queued', 'running')
              AND NOT (w.run_anyway AND j.id IS NULL));
    IF v_due IS NULL THEN
        RETURN;
    END IF;
    v_cancelled := pgwake.jobs_recheck_waiting(v_due);
    settled := (SELECT count(*)::integer FROM pgwake.jobs AS j
                 WHERE j.id = ANY (v_due) AND j.status <> 'waiting');
    settled := settled + pgwake.jobs_settle_dependents(v_cancelled);
END;
$$;

-- These three run as the caller, and refuse one without UPDATE on pgwake.jobs (no
-- application role has it); they only ever apply what the rows say, so calling them
-- more often than needed changes nothing that should not change.

-- Table pgwake.jobs: the triggers -----------------------------------------------------

-- A job inserted with depends_on: each dependency must exist in the job's tenant (rows
-- inserted earlier, in this statement too: the function is VOLATILE, so it sees the
-- rows this statement inserted before this one) and, unless run_anyway, must not have
-- failed or been cancelled. The job waits (waiting_for: its open dependencies) unless
-- they are all resolved already. It runs with the inserting role's privileges, as the
-- other insert triggers do (not SECURITY DEFINER): the role reads its dependencies, so
-- it needs SELECT on pgwake.jobs (a confined role has it), and a confined role sees only
-- its tenants' jobs: another tenant's job gets the message of a job that does not
-- exist, whichever role inserts. It takes no lock on the dependencies, so no inserting
-- session can hold up the outcome of a job.
CREATE FUNCTION pgwake.jobs_before_insert_dependencies() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    v_missing bigint;
    v_failed  bigint;
    v_open    integer;
BEGIN
    IF array_position(NEW.depends_on, NULL) IS NOT NULL OR cardinality(NEW.depends_on) > 10000
       OR array_ndims(NEW.depends_on) <> 1 OR NEW.unique_key IS NOT NULL THEN
        RETURN NEW;  -- refused by a CHECK constraint that names the problem
    END IF;
    -- One primary-key probe per dependency (this runs for every row with depends_on).
    SELECT min(d.dep) FILTER (WHERE j.id IS NULL),
           min(d.dep) FILTER (WHERE j.status IN ('failed', 'cancelled')),
           count(DISTINCT d.dep) FILTER (WHERE j.status IN ('waiting', 'scheduled', 'queued',
                                                            'running'))
      INTO v_missing, v_failed, v_open
      FROM unnest(NEW.depends_on) AS d(dep)
      LEFT JOIN pgwake.jobs AS j ON j.id = d.dep AND j.tenant_id = NEW.tenant_id;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'pgwake: a job of tenant % may depend only on jobs of its tenant that '
                        'exist; job % does not', NEW.tenant_id, v_missing
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'jobs_depends_on_exist',
                  TABLE = 'jobs', SCHEMA = 'pgwake';
    END IF;
    IF v_failed IS NOT NULL AND NOT NEW.run_anyway THEN
        RAISE EXCEPTION 'pgwake: job % it would depend on has already %; insert with '
                        'run_anyway = true to run after it anyway', v_failed,
                        CASE (SELECT j.status FROM pgwake.jobs AS j WHERE j.id = v_failed)
                             WHEN 'failed' THEN 'failed' ELSE 'been cancelled' END
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_not_failed',
                  TABLE = 'jobs', SCHEMA = 'pgwake';
    END IF;
    IF v_open > 0 AND NEW.status IN ('waiting', 'scheduled', 'queued') THEN
        NEW.status := 'waiting';
        NEW.waiting_for := v_open;
    ELSE
        IF NEW.status = 'waiting' THEN
            NEW.status := 'queued';  -- jobs_schedule_before_insert, after this, may delay it
        END IF;
        NEW.waiting_for := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_depends_on_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (cardinality(NEW.depends_on) > 0)
    EXECUTE FUNCTION pgwake.jobs_before_insert_dependencies();

-- depends_on never changes after the insert (that is what keeps the graph acyclic).
CREATE FUNCTION pgwake.jobs_before_update_of_depends_on() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'pgwake: depends_on of job % cannot be changed after its insert', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_unchanging',
              TABLE = 'jobs', SCHEMA = 'pgwake';
END;
$$;

CREATE TRIGGER jobs_depends_on_unchanging
    BEFORE UPDATE OF depends_on ON pgwake.jobs
    FOR EACH ROW
    WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on)
    EXECUTE FUNCTION pgwake.jobs_before_update_of_depends_on();

-- Functions: cancel and retry as the calling role -------------------------------------

-- Cancels job p_job_id as role p_as (see pgwake.cancel_job). A waiting job is cancelled
-- as a queued one is; the jobs waiting for a job cancelled here are settled at once.
CREATE OR REPLACE FUNCTION pgwake.job_cancel_as(p_job_id bigint, p_as name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v_tenants text[] := pgwake.acting_tenants(p_as);
    v_tenant  text;
BEGIN
    UPDATE pgwake.jobs
       SET status = 'cancelled', finished_at = now(), last_error = 'cancelled by ' || p_as
     WHERE id = p_job_id AND status IN ('waiting', 'scheduled', 'queued')
       AND (v_tenants IS NULL OR tenant_id = ANY (v_tenants))
    RETURNING tenant_id INTO v_tenant;
    IF v_tenant IS NOT NULL THEN
        PERFORM pgwake.job_event(p_job_id, v_tenant, NULL, 'cancelled');
        PERFORM pgwake.jobs_settle_dependents(ARRAY[p_job_id]);
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

-- Retries job p_job_id as role p_as (see pgwake.retry_job). A job with dependencies
-- waits for them again (and is cancelled again at once if one of them failed or was
-- cancelled and it is not run_anyway).
CREATE OR REPLACE FUNCTION pgwake.job_retry_as(p_job_id bigint, p_as name) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
    v_tenants text[] := pgwake.acting_tenants(p_as);
    v_tenant  text;
    v_waits   boolean;
BEGIN
    UPDATE pgwake.jobs
       SET status = CASE WHEN cardinality(depends_on) > 0 THEN 'waiting' ELSE 'queued' END,
           waiting_for = CASE WHEN cardinality(depends_on) > 0 THEN cardinality(depends_on) END,
           attempts = 0, run_at = now(), finished_at = NULL,
           result = NULL, progress = NULL, cancel_requested_at = NULL
     WHERE id = p_job_id AND status IN ('failed', 'cancelled')
       AND (v_tenants IS NULL OR tenant_id = ANY (v_tenants))
    RETURNING tenant_id, status = 'waiting' INTO v_tenant, v_waits;
    IF v_tenant IS NULL THEN
        RETURN false;
    END IF;
    IF v_waits THEN
        PERFORM pgwake.job_event(p_job_id, v_tenant, NULL, 'waiting');
        PERFORM pgwake.jobs_settle_dependents(pgwake.jobs_recheck_waiting(ARRAY[p_job_id]));
        RETURN true;
    END IF;
    PERFORM pgwake.job_event(p_job_id, v_tenant, NULL, 'queued');
    IF pgwake.someone_waits(0) THEN
        PERFORM pg_notify('pgwake_jobs', '');
    END IF;
    RETURN true;
END;
$$;

-- Function for administrators: confine a role to a tenant -----------------------------

-- Confined roles may insert depends_on and run_anyway too.
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
        'unique_key, unique_for, timeout, depends_on, run_anyway) ON pgwake.jobs TO %I',
        p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                   'pgwake.tenant_backlog TO %I', p_role);
    EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                   'ON pgwake.tenants TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;

-- Roles confined before this version may insert the new columns too.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT DISTINCT r.role_name FROM pgwake.tenant_roles AS r
                    JOIN pg_catalog.pg_roles AS g ON g.rolname = r.role_name LOOP
        EXECUTE format('GRANT INSERT (depends_on, run_anyway) ON pgwake.jobs TO %I', v_role);
    END LOOP;
END;
$$;

-- Views: waiting jobs are counted -----------------------------------------------------

-- Active jobs by kind and status, with how long the oldest queued one has been due.
-- security_invoker: a role confined to its tenants sees only its tenants here too.
-- Each status is read on its own, through its partial index: one scan of all four
-- could use none of them and would read the finished history too.
CREATE OR REPLACE VIEW pgwake.queue_status WITH (security_invoker = true) AS
SELECT j.kind,
       j.status,
       count(*) AS jobs,
       max(now() - j.run_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_wait,
       min(j.run_at) FILTER (WHERE j.status = 'scheduled') AS next_scheduled_at
  FROM (SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'waiting'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
 GROUP BY j.kind, j.status;

-- Per tenant with active jobs: backlog, running, scheduled, the oldest queued wait, and
-- its settings; and, last, the jobs waiting for others.
CREATE OR REPLACE VIEW pgwake.tenant_backlog WITH (security_invoker = true) AS
SELECT j.tenant_id,
       count(*) FILTER (WHERE j.status = 'queued') AS queued,
       count(*) FILTER (WHERE j.status = 'running') AS running,
       count(*) FILTER (WHERE j.status = 'scheduled') AS scheduled,
       max(now() - j.run_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_wait,
       coalesce(t.paused, false) AS paused,
       t.max_concurrency,
       coalesce(t.weight, 1) AS weight,
       count(*) FILTER (WHERE j.status = 'waiting') AS waiting
  FROM (SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'waiting'
        UNION ALL
        SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
  LEFT JOIN pgwake.tenants AS t ON t.tenant_id = j.tenant_id
 GROUP BY j.tenant_id, t.paused, t.max_concurrency, t.weight;
