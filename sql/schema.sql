-- pgwake: the whole current schema, ordered by object: the reading copy.
--
-- The migrations in sql/migrations/ are the truth: `pgwake migrate` applies them, and
-- this file is what applying all of them in order produces. A test applies both to
-- fresh databases and compares their catalogs (columns, constraints, indexes,
-- triggers, policies, grants, functions with their bodies, views with their
-- definitions, comments, sequences, and the rows this file inserts). Read this file to
-- learn the schema; change the schema with a new migration, then bring this file in
-- line.
--
-- Order: the schema; each table with its sequence, constraints, comment, indexes,
-- row-level security and policies, grants, and triggers with their functions (tables
-- in the order their policies need them: the confinement table before the tables it
-- confines); then the other functions (waiting and notifications, job events, the
-- claim's tenant cap, cancel and retry, administration); then the views.
--
-- Lock keys named below are listed in listener/locks.py.

CREATE SCHEMA pgwake;

-- Table pgwake.schema_migrations ------------------------------------------------------

-- Applied migrations (written by `pgwake migrate`). checksum is the sha256 of the
-- file without its first line, the mark (`-- pgwake: compatible` or `-- pgwake:
-- breaking`), which is recorded in breaking. A worker runs against a schema newer than
-- its own only while every migration past its own has breaking = false (NULL: applied
-- before pgwake recorded marks; `pgwake migrate` fills it in from the file).
CREATE TABLE pgwake.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    breaking   boolean
);

-- Table pgwake.workers ----------------------------------------------------------------

-- Keys of the workers' liveness locks (see pgwake.workers.lock_key).
CREATE SEQUENCE pgwake.worker_lock_keys AS integer MINVALUE 1 CYCLE;

-- Workers register on start and heartbeat on an interval (one write per interval per
-- worker, never per job). jobs.claimed_by names the worker holding a running job. Every
-- worker also holds a session-level advisory lock, pg_advisory_lock(1885828962,
-- lock_key), on a connection of its own while it runs: when the process dies the lock
-- vanishes with its connection, and the maintenance leader recovers its jobs within
-- seconds (sql/queries/maintenance.sql: worker_list_lost). Only the lock held by the
-- session recorded in session_pid counts: anyone can take an advisory lock, so a lock
-- on the same key held by another session neither keeps a dead worker alive nor stops a
-- live one. A worker that is alive but silent for longer than the heartbeat timeout is
-- recovered too.
CREATE TABLE pgwake.workers (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    kinds        text[]      NOT NULL,
    concurrency  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lock_key     integer     NOT NULL DEFAULT nextval('pgwake.worker_lock_keys'),
    -- The backend that holds the liveness lock (the heartbeat session, set by each beat
    -- that holds it): a lock on the same key held by any other session does not count.
    session_pid  integer,

    CONSTRAINT workers_lock_key_unique UNIQUE (lock_key)
);

ALTER SEQUENCE pgwake.worker_lock_keys OWNED BY pgwake.workers.lock_key;

-- Table pgwake.tenant_roles -----------------------------------------------------------

-- Application roles confined to their tenants by row-level security. A role listed in
-- pgwake.tenant_roles, and every role that is a member of it (directly, through a
-- chain, with or without INHERIT: any role that could SET ROLE to it), sees and inserts
-- only its tenants' jobs; other roles are unaffected.
CREATE TABLE pgwake.tenant_roles (
    role_name  name        NOT NULL,
    tenant_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role_name, tenant_id)
);

COMMENT ON TABLE pgwake.tenant_roles IS
    'Roles confined by row-level security to the jobs of the listed tenants.';

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
-- security shows it only its own memberships. The policies of pgwake.jobs and
-- pgwake.tenants call it.
CREATE FUNCTION pgwake.confined_tenants() RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog AS $$
    SELECT array_agg(DISTINCT r.tenant_id ORDER BY r.tenant_id)
      FROM pgwake.tenant_roles AS r
      JOIN pg_roles AS g ON g.rolname = r.role_name
     WHERE pg_has_role(g.oid, 'MEMBER')
       AND NOT EXISTS (SELECT 1 FROM pg_roles AS me
                        WHERE me.rolname = current_user AND (me.rolsuper OR me.rolbypassrls));
$$;

-- Table pgwake.jobs -------------------------------------------------------------------

-- The types of payload, metadata, priority, run_at, max_attempts, timeout, attempts,
-- unique_for and depends_on: each carries the checks that read its column alone, so
-- they run when a value is written to the column (an INSERT, or an UPDATE that sets
-- it) and not whenever a claim, an outcome or a progress report writes the row.
-- PostgreSQL checks a table's constraints on every row an UPDATE writes, and
-- reads and plans each again for every statement: for payload and metadata, whose
-- checks read the whole value, that cost each claim and outcome write of 1,000 jobs of
-- 100 KB a quarter of a second (0022); for the nine others, about 27 microseconds of
-- server time per statement (0023). The constraints keep the names they had on the
-- table. NOT VALID: as 0022 and 0023 add them to a table whose rows the table's
-- constraints had checked already.
CREATE DOMAIN pgwake.job_payload AS jsonb;
CREATE DOMAIN pgwake.job_metadata AS jsonb;
ALTER DOMAIN pgwake.job_payload ADD CONSTRAINT jobs_payload_must_be_json_object
    CHECK (jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN pgwake.job_payload ADD CONSTRAINT jobs_payload_at_most_1mib
    CHECK (octet_length(VALUE::text) <= 1048576) NOT VALID;
ALTER DOMAIN pgwake.job_metadata ADD CONSTRAINT jobs_metadata_must_be_json_object
    CHECK (VALUE IS NULL OR jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN pgwake.job_metadata ADD CONSTRAINT jobs_metadata_at_most_64kib
    CHECK (VALUE IS NULL OR octet_length(VALUE::text) <= 65536) NOT VALID;

COMMENT ON DOMAIN pgwake.job_payload IS
    'pgwake.jobs.payload: a JSON object of at most 1 MiB as text, checked when written.';
COMMENT ON DOMAIN pgwake.job_metadata IS
    'pgwake.jobs.metadata: NULL or a JSON object of at most 64 KiB as text, checked when written.';

CREATE DOMAIN pgwake.job_priority AS integer;
CREATE DOMAIN pgwake.job_run_at AS timestamptz;
CREATE DOMAIN pgwake.job_max_attempts AS integer;
CREATE DOMAIN pgwake.job_timeout AS interval;
CREATE DOMAIN pgwake.job_attempts AS integer;
CREATE DOMAIN pgwake.job_unique_for AS interval;
CREATE DOMAIN pgwake.job_depends_on AS bigint[];
ALTER DOMAIN pgwake.job_priority ADD CONSTRAINT jobs_priority_between_minus_1000_and_1000
    CHECK (VALUE BETWEEN -1000 AND 1000) NOT VALID;
-- Neither infinity (the promoter could not compute how long to sleep) nor a year that
-- clients such as Python's datetime cannot represent (a claim reading one would fail
-- for its whole batch).
ALTER DOMAIN pgwake.job_run_at ADD CONSTRAINT jobs_run_at_between_years_1_and_9999
    CHECK (VALUE >= '0001-01-01 00:00:00+00' AND VALUE < '10000-01-01 00:00:00+00') NOT VALID;
ALTER DOMAIN pgwake.job_max_attempts ADD CONSTRAINT jobs_max_attempts_between_1_and_1000
    CHECK (VALUE BETWEEN 1 AND 1000) NOT VALID;
ALTER DOMAIN pgwake.job_timeout ADD CONSTRAINT jobs_timeout_positive_at_most_7_days
    CHECK (VALUE > interval '0' AND VALUE <= interval '7 days') NOT VALID;
ALTER DOMAIN pgwake.job_attempts ADD CONSTRAINT jobs_attempts_not_negative
    CHECK (VALUE >= 0) NOT VALID;
ALTER DOMAIN pgwake.job_unique_for ADD CONSTRAINT jobs_unique_for_positive_at_most_366_days
    CHECK (VALUE IS NULL OR (VALUE > interval '0' AND VALUE <= interval '366 days')) NOT VALID;
-- Windows are counted in seconds: a month or a year has no fixed length.
ALTER DOMAIN pgwake.job_unique_for ADD CONSTRAINT jobs_unique_for_without_months_or_years
    CHECK (VALUE IS NULL
           OR (date_part('month', VALUE) = 0 AND date_part('year', VALUE) = 0)) NOT VALID;
ALTER DOMAIN pgwake.job_depends_on ADD CONSTRAINT jobs_depends_on_at_most_10000
    CHECK (VALUE IS NULL
           OR (cardinality(VALUE) <= 10000 AND coalesce(array_ndims(VALUE), 1) = 1)) NOT VALID;
ALTER DOMAIN pgwake.job_depends_on ADD CONSTRAINT jobs_depends_on_without_nulls
    CHECK (VALUE IS NULL OR array_position(VALUE, NULL) IS NULL) NOT VALID;

COMMENT ON DOMAIN pgwake.job_priority IS
    'pgwake.jobs.priority: -1000 to 1000, checked when written.';
COMMENT ON DOMAIN pgwake.job_run_at IS
    'pgwake.jobs.run_at: finite, in the years 1 to 9999, checked when written.';
COMMENT ON DOMAIN pgwake.job_max_attempts IS
    'pgwake.jobs.max_attempts: 1 to 1000, checked when written.';
COMMENT ON DOMAIN pgwake.job_timeout IS
    'pgwake.jobs.timeout: more than 0, at most 7 days, checked when written.';
COMMENT ON DOMAIN pgwake.job_attempts IS
    'pgwake.jobs.attempts: not negative, checked when written.';
COMMENT ON DOMAIN pgwake.job_unique_for IS
    'pgwake.jobs.unique_for: NULL or more than 0 and at most 366 days, without months or years.';
COMMENT ON DOMAIN pgwake.job_depends_on IS
    'pgwake.jobs.depends_on: NULL or a one-dimensional array of at most 10,000 ids, without NULLs.';

CREATE TABLE pgwake.jobs (
    -- Columns an application may set on INSERT (all but kind have defaults).
    id           bigint      GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    tenant_id    text        NOT NULL DEFAULT 'default',
    kind         text        NOT NULL,
    payload      pgwake.job_payload NOT NULL DEFAULT '{}'::jsonb,
    priority     pgwake.job_priority NOT NULL DEFAULT 0,
    run_at       pgwake.job_run_at NOT NULL DEFAULT now(),
    max_attempts pgwake.job_max_attempts NOT NULL DEFAULT 20,
    unique_key   text,
    timeout      pgwake.job_timeout NOT NULL DEFAULT interval '15 minutes',
    -- Columns that belong to the worker.
    status       text        NOT NULL DEFAULT 'queued',
    attempts     pgwake.job_attempts NOT NULL DEFAULT 0,
    claimed_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    last_error   text,
    result       jsonb,
    progress     jsonb,
    -- Set when someone asked to cancel the job while it was running (pgwake.cancel_job).
    cancel_requested_at timestamptz,
    -- Set by an application (with unique_key): the key is held for the window of this
    -- period the job was inserted in, even after the job finished (jobs_unique_window_idx).
    unique_for   pgwake.job_unique_for,
    -- The end of that window, written at insert (pgwake.jobs_before_insert_unique_window).
    unique_until timestamptz,
    -- Set by an application: the jobs of the same tenant that must succeed (with
    -- run_anyway: finish) before this one runs; it waits in status waiting until then
    -- (pgwake.jobs_before_insert_dependencies). Never changed after the insert.
    depends_on   pgwake.job_depends_on,
    run_anyway   boolean     NOT NULL DEFAULT false,
    -- How many of depends_on were still open at the insert (then counted down in
    -- pgwake.job_waits; a hint: pgwake.jobs_recheck_waiting decides).
    waiting_for  integer,
    -- Set by an application: context that is not the handler's input (a JSON object).
    metadata     pgwake.job_metadata,
    -- The role that inserted the job (only pgwake's own roles may set it otherwise).
    created_by   text        NOT NULL DEFAULT current_user,

    -- The table's own checks (PostgreSQL checks them on every row an UPDATE writes, and
    -- reads and plans each again for every statement; the domains above hold the rest).
    -- The text columns keep theirs here: applications often give one parameter to
    -- two of them (a unique_key that is the kind: VALUES ($1, $1)), and PostgreSQL
    -- refuses a parameter assigned to columns of two types, such as a domain and text
    -- (inconsistent types deduced for parameter $1). Those that read two columns can
    -- only be the table's.
    CONSTRAINT jobs_status_valid
        CHECK (status IN ('waiting', 'scheduled', 'queued', 'running', 'succeeded', 'failed',
                          'cancelled')),
    CONSTRAINT jobs_tenant_id_not_empty
        CHECK (length(btrim(tenant_id)) > 0 AND length(tenant_id) <= 200),
    CONSTRAINT jobs_kind_not_empty
        CHECK (length(btrim(kind)) > 0 AND length(kind) <= 200),
    CONSTRAINT jobs_unique_key_not_empty
        CHECK (unique_key IS NULL OR (length(unique_key) > 0 AND length(unique_key) <= 1000)),
    -- A waiting job does not hold a unique key: releasing it could collide with the
    -- job that does, in the statement that writes another job's outcome.
    CONSTRAINT jobs_depends_on_without_unique_key
        CHECK (depends_on IS NULL OR cardinality(depends_on) = 0 OR unique_key IS NULL),
    CONSTRAINT jobs_running_has_claimant
        CHECK ((status = 'running') = (claimed_by IS NOT NULL)),
    CONSTRAINT jobs_unique_for_needs_unique_key
        CHECK (unique_for IS NULL OR unique_key IS NOT NULL),
    CONSTRAINT jobs_unique_until_with_unique_for
        CHECK ((unique_for IS NULL) = (unique_until IS NULL)),
    CONSTRAINT jobs_waiting_has_dependencies
        CHECK (status <> 'waiting' OR cardinality(depends_on) > 0)
) WITH (
    -- Jobs are updated in place (claim, finish); leave room for HOT updates and let
    -- autovacuum keep up with a queue's churn instead of waiting for 20% dead rows.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

COMMENT ON TABLE pgwake.jobs IS
    'pgwake job queue. Apps INSERT (tenant_id, kind, payload[, priority, run_at, max_attempts, unique_key, unique_for, timeout, depends_on, run_anyway, metadata]); everything else belongs to the worker.';

-- The claim walks ready jobs tenant by tenant: leading tenant_id lets the claim hop from
-- one tenant to the next (a loose index scan), then priority and age order the jobs
-- within a tenant. Only queued rows are indexed, so finished and future jobs cost
-- the claim nothing.
CREATE INDEX jobs_ready_idx ON pgwake.jobs (tenant_id, priority DESC, run_at, id)
    WHERE status = 'queued';

-- The claim's priority levels: the highest and lowest ready priority, and the tenants
-- holding ready jobs of the highest (priority first, so one level's tenants are a
-- range of the index, walked one probe per tenant). Only jobs whose priority is not
-- the default 0: an enqueue at the default priority does not maintain it.
CREATE INDEX jobs_ready_priority_idx ON pgwake.jobs (priority DESC, tenant_id)
    WHERE status = 'queued' AND priority <> 0;

-- Promotion of delayed and retrying jobs looks up the earliest due scheduled job.
CREATE INDEX jobs_scheduled_idx ON pgwake.jobs (run_at) WHERE status = 'scheduled';

-- Running jobs: one index serves the fleet-wide count per capped tenant (inside the
-- claim, on the leading column) and the lookups per worker (heartbeats, recovery,
-- put-backs: a scan of the running jobs only, which are few). Every claim inserts into
-- each index on running jobs, so there is only this one.
CREATE INDEX jobs_running_tenant_idx ON pgwake.jobs (tenant_id, claimed_by)
    WHERE status = 'running';

-- unique_key: at most one scheduled, queued or running job per tenant, kind and key.
-- Apps may rely on INSERT ... ON CONFLICT DO NOTHING with this index.
CREATE UNIQUE INDEX jobs_unique_key_idx ON pgwake.jobs (tenant_id, kind, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running');

-- unique_key with unique_for: at most one job per tenant, kind, key and period in each
-- window of the period, whatever its status. Windows are fixed: those of a period P are
-- [origin + n*P, origin + (n+1)*P) from Monday 2001-01-01 00:00 UTC (a period that
-- divides a day starts at midnight UTC; 7 days start on Mondays); unique_until is the
-- end of the job's. Apps may rely on INSERT ... ON CONFLICT DO NOTHING (with no conflict
-- target, it covers this index and jobs_unique_key_idx). Retention keeps a finished job
-- until its window has ended.
CREATE UNIQUE INDEX jobs_unique_window_idx
    ON pgwake.jobs (tenant_id, kind, unique_key, unique_for, unique_until)
    WHERE unique_until IS NOT NULL;

-- Retention deletes finished jobs oldest first, per status; the failed-jobs view lists
-- the newest failures first. Neither touches queued or running rows.
CREATE INDEX jobs_finished_idx ON pgwake.jobs (status, finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- Who waits for a job: waiting jobs only, so a job that was released costs nothing.
-- Without GIN's pending list (fastupdate): every search reads the whole list, so after a
-- fan-in's insert each settling probe read thousands of entries (a DAG of 10,000 jobs
-- ran at about 1,100 jobs/s); entries go straight into the tree instead.
CREATE INDEX jobs_waiting_depends_on_idx ON pgwake.jobs USING gin (depends_on)
    WITH (fastupdate = off)
    WHERE status = 'waiting';

-- Waiting jobs in id order: the sweep, the views and the metrics.
CREATE INDEX jobs_waiting_idx ON pgwake.jobs (id) WHERE status = 'waiting';

-- Jobs by metadata (metadata @> '{...}': a strict operator, so the planner knows such a
-- row is in this partial index). Only jobs that have metadata.
CREATE INDEX jobs_metadata_idx ON pgwake.jobs USING gin (metadata jsonb_path_ops)
    WHERE metadata IS NOT NULL;

ALTER TABLE pgwake.jobs ENABLE ROW LEVEL SECURITY;

-- Confined roles read and write only their own tenants' rows; other roles are not
-- restricted by rows (only by their privileges). The scalar subqueries make the
-- function run once per statement, not once per row.
CREATE POLICY jobs_confined_to_own_tenants ON pgwake.jobs
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

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

-- A job inserted with unique_for gets the end of its window in unique_until: a row
-- trigger, called only for such rows, writes the end of the window of the period that
-- holds the inserting transaction's now(). A period the CHECK constraints refuse gets no
-- window (they name the problem; date_bin would raise a message of its own). The end is
-- the window's start plus the period in seconds, not as an interval: adding '1 day' to a
-- timestamptz adds a calendar day of the session's time zone, and every session must
-- compute the same end.
CREATE FUNCTION pgwake.jobs_before_insert_unique_window() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF NEW.unique_for > interval '0' AND NEW.unique_for <= interval '366 days'
       AND date_part('month', NEW.unique_for) = 0 AND date_part('year', NEW.unique_for) = 0 THEN
        NEW.unique_until := date_bin(NEW.unique_for, now(), timestamptz '2001-01-01 00:00:00+00')
                            + make_interval(secs => extract(epoch FROM NEW.unique_for)::float8);
    ELSE
        NEW.unique_until := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_unique_window_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (NEW.unique_for IS NOT NULL)
    EXECUTE FUNCTION pgwake.jobs_before_insert_unique_window();

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
-- The trigger runs AFTER the update (0021): with a BEFORE UPDATE row trigger on the
-- table, PostgreSQL locks every updated row for it, writing a lock record to the WAL
-- for each job of each outcome write, though the trigger never fires for them. (The
-- function keeps the name it was created with.)
CREATE FUNCTION pgwake.jobs_before_update_of_depends_on() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'pgwake: depends_on of job % cannot be changed after its insert', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_unchanging',
              TABLE = 'jobs', SCHEMA = 'pgwake';
END;
$$;

CREATE TRIGGER jobs_depends_on_unchanging
    AFTER UPDATE OF depends_on ON pgwake.jobs
    FOR EACH ROW
    WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on)
    EXECUTE FUNCTION pgwake.jobs_before_update_of_depends_on();

-- After each INSERT statement: one NOTIFY when a worker waits for new jobs, which wakes
-- the claimers (its payload is the job's id when the statement inserted exactly one
-- ready job, so a waiting worker can claim it by id: job_claim_notified; else ''); one NOTIFY 'later' whenever a job is due later, which wakes only
-- the promoters (they sleep until the earliest due job); the job events of the new rows
-- while a session follows them. The steps of
-- pgwake.someone_waits (see "Functions: waiting for notifications" below) are written
-- out here rather than called: this runs for every insert statement, and each call
-- would cost about as much as the steps themselves.
-- No SECURITY DEFINER: it changes no row, so an application role needs only INSERT.
CREATE FUNCTION pgwake.jobs_after_insert() RETURNS trigger
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

CREATE TRIGGER jobs_notify_after_insert
    AFTER INSERT ON pgwake.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT
    EXECUTE FUNCTION pgwake.jobs_after_insert();

-- Table pgwake.jobs_archive -----------------------------------------------------------

-- Finished jobs retention moved out of pgwake.jobs (setting retention_archive).
CREATE TABLE pgwake.jobs_archive (
    id           bigint      PRIMARY KEY,
    tenant_id    text        NOT NULL,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    priority     integer     NOT NULL,
    run_at       timestamptz NOT NULL,
    max_attempts integer     NOT NULL,
    status       text        NOT NULL,
    attempts     integer     NOT NULL,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    last_error   text,
    result       jsonb,
    depends_on   bigint[],
    run_anyway   boolean     NOT NULL,
    metadata     jsonb,
    created_by   text        NOT NULL,
    -- When retention moved it here; it is deleted retention_archived seconds later.
    archived_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pgwake.jobs_archive IS
    'pgwake finished jobs moved here by retention (setting retention_archive), kept for retention_archived.';

-- The archive's own retention deletes the oldest archived first.
CREATE INDEX jobs_archive_archived_at_idx ON pgwake.jobs_archive (archived_at);

ALTER TABLE pgwake.jobs_archive ENABLE ROW LEVEL SECURITY;

-- As for pgwake.jobs: confined roles read only their own tenants' archived jobs.
CREATE POLICY jobs_archive_confined_to_own_tenants ON pgwake.jobs_archive
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

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

-- Table pgwake.tenants ----------------------------------------------------------------

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
    -- At most rate_limit jobs of the tenant started in any rate_period, across every
    -- worker (both NULL: no rate limit). Changing them takes effect at the next claim
    -- and wakes the workers (pgwake.rate_limits_after_change).
    rate_limit       integer,
    rate_period      interval,

    CONSTRAINT tenants_tenant_id_not_empty
        CHECK (length(btrim(tenant_id)) > 0 AND length(tenant_id) <= 200),
    CONSTRAINT tenants_max_concurrency_between_0_and_100000
        CHECK (max_concurrency IS NULL OR max_concurrency BETWEEN 0 AND 100000),
    CONSTRAINT tenants_weight_between_1_and_100
        CHECK (weight BETWEEN 1 AND 100),
    CONSTRAINT tenants_db_dsn_is_ciphertext
        CHECK (db_dsn_encrypted IS NULL OR db_dsn_encrypted LIKE 'pgwake:v1:%'),
    CONSTRAINT tenants_rate_limit_between_1_and_1000000
        CHECK (rate_limit IS NULL OR rate_limit BETWEEN 1 AND 1000000),
    CONSTRAINT tenants_rate_period_between_1_second_and_1_day
        CHECK (rate_period IS NULL OR rate_period BETWEEN interval '1 second' AND interval '1 day'),
    CONSTRAINT tenants_rate_limit_and_rate_period_set_together
        CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

COMMENT ON TABLE pgwake.tenants IS
    'pgwake per-tenant settings: fleet-wide max_concurrency, weight, paused, encrypted own-database DSN.';

-- The same for tenants' settings (confined roles may read some columns of their own).
ALTER TABLE pgwake.tenants ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenants_confined_to_own_tenants ON pgwake.tenants
    USING ((SELECT pgwake.confined_tenants()) IS NULL
           OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]))
    WITH CHECK ((SELECT pgwake.confined_tenants()) IS NULL
                OR tenant_id = ANY ((SELECT pgwake.confined_tenants())::text[]));

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

-- Table pgwake.schedules --------------------------------------------------------------

-- One row per schedule. The maintenance leader of a round (sql/queries/maintenance.sql:
-- schedule_list_due) enqueues the jobs of every slot that has come and moves next_run_at
-- to the next slot, in one transaction with the row locked: each slot is enqueued
-- exactly once, whatever the number of workers.
CREATE TABLE pgwake.schedules (
    name         text        PRIMARY KEY,
    -- Standard 5-field cron (minute hour day-of-month month day-of-week), evaluated in
    -- the time zone below.
    cron         text        NOT NULL,
    timezone     text        NOT NULL DEFAULT 'UTC',
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The tenant to enqueue for; NULL: one job for every tenant in pgwake.tenants.
    tenant_id    text,
    priority     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 20,
    -- After downtime: 'skip' enqueues only the most recent missed slot, 'catch_up'
    -- every missed slot (at most 1000 per round).
    missed       text        NOT NULL DEFAULT 'skip',
    enabled      boolean     NOT NULL DEFAULT true,
    -- The next slot to enqueue; NULL until the leader first computes it.
    next_run_at  timestamptz,
    last_slot    timestamptz,
    -- Why the leader disabled the schedule (an invalid cron or time zone, jobs the jobs
    -- table refuses).
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schedules_name_not_empty
        CHECK (length(btrim(name)) > 0 AND length(name) <= 200),
    CONSTRAINT schedules_cron_not_empty CHECK (length(btrim(cron)) > 0),
    CONSTRAINT schedules_kind_not_empty CHECK (length(btrim(kind)) > 0 AND length(kind) <= 200),
    CONSTRAINT schedules_payload_must_be_json_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT schedules_missed_valid CHECK (missed IN ('skip', 'catch_up')),
    CONSTRAINT schedules_priority_between_minus_1000_and_1000
        CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT schedules_max_attempts_between_1_and_1000 CHECK (max_attempts BETWEEN 1 AND 1000),
    -- What a schedule copies into its jobs is checked as pgwake.jobs checks it, with
    -- the same words (jobs_tenant_id_not_empty, jobs_payload_at_most_1mib), so a
    -- schedule whose jobs would be refused is refused itself.
    CONSTRAINT schedules_tenant_id_not_empty
        CHECK (tenant_id IS NULL
               OR (length(btrim(tenant_id)) > 0 AND length(tenant_id) <= 200)),
    CONSTRAINT schedules_payload_at_most_1mib
        CHECK (octet_length(payload::text) <= 1048576),
    CONSTRAINT schedules_next_run_at_between_years_1_and_9999
        CHECK (next_run_at >= '0001-01-01 00:00:00+00' AND next_run_at < '10000-01-01 00:00:00+00'),
    CONSTRAINT schedules_last_slot_between_years_1_and_9999
        CHECK (last_slot >= '0001-01-01 00:00:00+00' AND last_slot < '10000-01-01 00:00:00+00')
);

CREATE INDEX schedules_due_idx ON pgwake.schedules (next_run_at) WHERE enabled;

-- Editing a schedule's cron or time zone (by SQL) takes effect at once: next_run_at is
-- cleared, unless the same UPDATE changes it too, and the leader's next round computes the
-- first slot after now from the new cron. No slot of the old cron is enqueued after
-- the edit commits.
CREATE FUNCTION pgwake.schedules_before_update_of_cron() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF (NEW.cron, NEW.timezone) IS DISTINCT FROM (OLD.cron, OLD.timezone)
       AND NEW.next_run_at IS NOT DISTINCT FROM OLD.next_run_at THEN
        NEW.next_run_at := NULL;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER schedules_cron_edit_takes_effect_at_once
    BEFORE UPDATE OF cron, timezone ON pgwake.schedules
    FOR EACH ROW
    EXECUTE FUNCTION pgwake.schedules_before_update_of_cron();

-- Table pgwake.leaders ----------------------------------------------------------------

-- One row per leader role of a round; the leader of a round holds its row locked (FOR
-- NO KEY UPDATE SKIP LOCKED) until its transaction ends. Row locks need UPDATE on this
-- table, which only pgwake's own roles have, where advisory locks need no privilege.
-- The 'metrics' row is never locked (the metrics leader holds an advisory lock,
-- listener/locks.py): its last_round_at is the time of the fleet's last metrics sample,
-- which every worker exports as an age (pgwake_metrics_sample_age_seconds).
CREATE TABLE pgwake.leaders (
    name text PRIMARY KEY,
    -- When this role's leader last completed a round (written by the metrics leader).
    last_round_at timestamptz,
    CONSTRAINT leaders_name_known
        CHECK (name IN ('maintenance', 'metrics', 'promotion', 'retention', 'schedules'))
);

INSERT INTO pgwake.leaders (name)
VALUES ('maintenance'), ('metrics'), ('promotion'), ('retention'), ('schedules');

-- Functions: waiting for notifications, and job events --------------------------------

-- Notifications are sent only when a session waits for them. A transaction that
-- sends a NOTIFY holds a database-wide lock from its commit until the commit is on
-- disk, so notifying transactions commit one at a time; most notifications would wake
-- nobody (a worker with a backlog claims again without being told). A session that
-- wants to be woken holds a session-level advisory lock in shared mode: (1885828967, 0)
-- for a worker waiting for new jobs, (1885828967, 1) for a session following job
-- events. pgwake.someone_waits(n) tries that lock in exclusive mode for an instant.
-- Waking is never lost: each looker first marks its transaction with a shared lock on
-- (1885828967, 100 + n); a session that starts waiting (pgwake.start_waiting) takes its
-- lock, then lists the transactions that looked before it, and looks for work once
-- they have all ended. Whoever looks after that sees the lock and notifies.
-- pgwake takes (1885828967, 100 + n) only in shared mode and never waits for it: a
-- transaction that cannot take it at once (a session that is not pgwake holds it
-- exclusively) notifies, so such a session costs notifications but stalls nothing.

-- Job events: one NOTIFY on channel pgwake_events per change of a job's status, with a
-- JSON payload {"id", "tenant", "status"}, sent while some session follows
-- them (pgwake.follow_events). Switched off for a session, role or database with the
-- setting pgwake.job_events = 'off' (for example
-- ALTER DATABASE app SET pgwake.job_events = 'off'); on when unset. Events carry no
-- free text (no kind, no progress message): anyone may LISTEN, and what an application
-- or a handler wrote is read from the job's row, under row-level security.

-- True when some session (this one included) waits to be woken by notifications of
-- kind p_what (0: new jobs, 1: job events). Marks the calling transaction as one that
-- looked, for pgwake.start_waiting. Plain SQL, every name schema-qualified, so that the
-- planner inlines it (and pgwake.events_wanted) into the statements that call it.
CREATE FUNCTION pgwake.someone_waits(p_what integer) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        -- Held exclusively by a session that is not pgwake: notify.
        WHEN NOT pg_catalog.pg_try_advisory_xact_lock_shared(
                     1885828967, 100 OPERATOR(pg_catalog.+) p_what) THEN true
        -- This session waits (its own lock never conflicts with itself).
        WHEN pg_catalog.current_setting(pg_catalog.concat('pgwake.waiting_', p_what), true)
             OPERATOR(pg_catalog.=) 'on' THEN true
        -- Nobody holds the waiting lock: nobody waits.
        WHEN pg_catalog.pg_try_advisory_lock(1885828967, p_what)
             THEN NOT pg_catalog.pg_advisory_unlock(1885828967, p_what)
        ELSE true
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
-- Starting to follow waits at most about a second for the waiting lock: it is busy only
-- for an instant while a transaction looks, unless a session that is not pgwake holds
-- it exclusively.
CREATE FUNCTION pgwake.follow_events() RETURNS void
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
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN COALESCE(pg_catalog.current_setting('pgwake.job_events', true), '')
             OPERATOR(pg_catalog.=) 'off' THEN false
        ELSE pgwake.someone_waits(1)
    END;
$$;

-- p_kind is kept for the callers' sake and not sent: a kind is text an application
-- wrote, and followers of other tenants may not read it.
CREATE FUNCTION pgwake.job_event(p_id bigint, p_tenant_id text, p_kind text,
                                            p_status text)
RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pg_notify('pgwake_events',
                     json_build_object('id', p_id, 'tenant', p_tenant_id,
                                       'status', p_status)::text)
     WHERE pgwake.events_wanted();
$$;

CREATE FUNCTION pgwake.job_events(p_ids bigint[], p_tenant_ids text[],
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

-- Function of the claim: a capped tenant's free slots ---------------------------------

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
CREATE FUNCTION pgwake.tenant_free_slots(p_tenant_id text, p_cap integer)
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

-- Functions: cancel and retry as the calling role -------------------------------------

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

-- Cancels job p_job_id as role p_as (see pgwake.cancel_job).
CREATE FUNCTION pgwake.job_cancel_as(p_job_id bigint, p_as name) RETURNS boolean
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

-- Cancel a job from SQL, as the calling role: one with UPDATE on pgwake.jobs (and not
-- confined) may cancel any job, a confined role only its tenants' jobs. A queued or
-- scheduled job becomes cancelled at once; for a running job the cancellation is
-- recorded in the row (cancel_requested_at), and the worker holding it, told at once
-- by a NOTIFY on pgwake_cancel that it checks against the row (and by its next
-- heartbeat in any case), stops the handler and records the job cancelled, with no
-- retry. Returns true when the job was cancelled or its cancellation requested; false
-- when it had already finished, does not exist, or is not the caller's to cancel.
CREATE FUNCTION pgwake.cancel_job(job_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pgwake.job_cancel_as(job_id, current_user);
$$;

-- Retries job p_job_id as role p_as (see pgwake.retry_job).
CREATE FUNCTION pgwake.job_retry_as(p_job_id bigint, p_as name) RETURNS boolean
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

-- Run a failed or cancelled job again, as the calling role (the same rule as
-- pgwake.cancel_job): it goes back to queued, due now, with its attempts reset;
-- last_error is kept. Returns false when the job is not failed or cancelled, does not
-- exist, or is not the caller's to retry. A job whose unique_key is taken by an active
-- job fails with the unique violation of jobs_unique_key_idx.
CREATE FUNCTION pgwake.retry_job(job_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog AS $$
    SELECT pgwake.job_retry_as(job_id, current_user);
$$;

-- Function for administrators: confine a role to a tenant -----------------------------

-- Confines an existing role to a tenant and grants what an app needs to enqueue:
-- USAGE on the schema, INSERT of the app columns, SELECT of its own jobs, of the views
-- and of its tenants' settings (not their DSNs). Refuses roles that bypass row-level
-- security. Call it once per (role, tenant) as an administrator:
--     CREATE ROLE acme_app LOGIN PASSWORD '...';
--     SELECT pgwake.confine_role_to_tenant('acme_app', 'acme');
CREATE FUNCTION pgwake.confine_role_to_tenant(p_role name, p_tenant_id text)
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
    EXECUTE format('GRANT SELECT ON pgwake.jobs_archive TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                   'pgwake.tenant_backlog TO %I', p_role);
    EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                   'ON pgwake.tenants TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;

-- Views -------------------------------------------------------------------------------

-- Active jobs by kind and status, with how long the oldest queued one has been due.
-- security_invoker: a role confined to its tenants sees only its tenants here too.
-- Each status is read on its own, through its partial index: one scan of all four
-- could use none of them and would read the finished history too.
CREATE VIEW pgwake.queue_status WITH (security_invoker = true) AS
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

-- The dead letters: failed jobs, newest first, with the first line of their error.
CREATE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
SELECT j.id,
       j.tenant_id,
       j.kind,
       j.attempts::integer AS attempts,
       j.max_attempts::integer AS max_attempts,
       j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error,
       j.payload::jsonb AS payload
  FROM pgwake.jobs AS j
 WHERE j.status = 'failed'
 ORDER BY j.finished_at DESC;

-- Per tenant with active jobs: backlog, running, scheduled, the oldest queued wait, and
-- its settings.
CREATE VIEW pgwake.tenant_backlog WITH (security_invoker = true) AS
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
