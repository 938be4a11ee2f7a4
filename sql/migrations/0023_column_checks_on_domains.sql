-- pgwake: compatible
-- 0023_column_checks_on_domains: the nine checks of pgwake.jobs that read one of
-- priority, run_at, max_attempts, timeout, attempts, unique_for or depends_on move
-- from the table to those columns' types (domains), as 0022 did for payload and
-- metadata, so that they run when a value is written to the column and not on every
-- row every UPDATE writes.
--
-- PostgreSQL checks every CHECK constraint of a table on every row an UPDATE writes,
-- whatever columns it sets, and before the first row of each statement it reads and
-- plans each constraint's expression again (a prepared statement does not keep them).
-- A domain's constraints are kept, planned, in the server's cache of types and run
-- only where a value of the domain is made: an INSERT, or an UPDATE that sets the
-- column (a claim sets attempts, which is then checked at the cost of a comparison).
-- Measured on PostgreSQL 15 with pgbench (prepared, one client, synchronous_commit off
-- so that the flush does not blur it, five runs of 5 s each): a claim-like and an
-- outcome-like UPDATE of one job took 0.341 ms (mean; 0.320 to 0.362) before and 0.286
-- ms (0.272 to 0.304) after, about 27 us per statement; a single-row INSERT 0.179 ms
-- (0.167 to 0.217) and 0.157 ms (0.150 to 0.163).
--
-- The text columns (tenant_id, kind, status, unique_key) keep their checks on the
-- table: applications often give one parameter to two of them (a unique_key that is
-- the kind: VALUES ($1, $1)), and PostgreSQL refuses a parameter assigned to columns
-- of two types, such as a domain and text (inconsistent types deduced for parameter
-- $1). An INSERT that gives one parameter to two of the columns that move, or to one
-- of them and a column of another type, must now cast it (VALUES ($1::int, $1::int));
-- comparing these columns with parameters needs nothing new.
--
-- Same refusals: the domains' constraints keep the names of the table's (an error names
-- jobs_priority_between_minus_1000_and_1000 as before, with SQLSTATE 23514), and the
-- same conditions. The message now reads 'value for domain pgwake.job_priority violates
-- check constraint "..."' rather than 'new row for relation "jobs" violates check
-- constraint "..."', and carries no DETAIL with the whole row. A row with bad values
-- in these columns is refused for the first of them in the INSERT's column order (a
-- domain is checked as the row is made), before the table's own constraints.
--
-- The columns change type without rewriting the table: each domain is made without
-- constraints first (binary-compatible with its base type), then they are added NOT
-- VALID, since every row already passed the same conditions as table constraints.
-- PostgreSQL rebuilds the partial indexes that hold these columns (jobs_ready_idx,
-- jobs_ready_priority_idx, jobs_scheduled_idx, jobs_unique_window_idx,
-- jobs_waiting_depends_on_idx), each reading the table once while the migration holds
-- its lock, which holds up claims and inserts: `pgwake migrate` of a table of 1,000,000
-- jobs, 100,000 of them queued, took 1.1 s on PostgreSQL 15.
--
-- The views are redefined around the change rather than dropped, so that the grants
-- given to roles stay, and keep their column types: queue_status and tenant_backlog
-- come back unchanged (they return aggregates of run_at, of its base type), failed_jobs
-- casts attempts and max_attempts, which it returns as they are. The triggers whose
-- definitions name these columns are dropped and made again, unchanged.
--
-- Compatible with workers of 0022: asyncpg reads a domain as its base type, their
-- statements compare these columns only with values of the base type, and what they
-- write passes the same conditions as before.

-- The views read the columns that change type: while they do, each returns no row, with
-- the same columns.
CREATE OR REPLACE VIEW pgwake.queue_status WITH (security_invoker = true) AS
SELECT NULL::text AS kind,
       NULL::text AS status,
       NULL::bigint AS jobs,
       NULL::interval AS oldest_queued_wait,
       NULL::timestamptz AS next_scheduled_at
 WHERE false;

CREATE OR REPLACE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
SELECT NULL::bigint AS id,
       NULL::text AS tenant_id,
       NULL::text AS kind,
       NULL::integer AS attempts,
       NULL::integer AS max_attempts,
       NULL::timestamptz AS finished_at,
       NULL::text AS error,
       NULL::jsonb AS payload
 WHERE false;

CREATE OR REPLACE VIEW pgwake.tenant_backlog WITH (security_invoker = true) AS
SELECT NULL::text AS tenant_id,
       NULL::bigint AS queued,
       NULL::bigint AS running,
       NULL::bigint AS scheduled,
       NULL::interval AS oldest_queued_wait,
       NULL::boolean AS paused,
       NULL::integer AS max_concurrency,
       NULL::integer AS weight,
       NULL::bigint AS waiting
 WHERE false;

DROP TRIGGER jobs_schedule_before_insert ON pgwake.jobs;
DROP TRIGGER jobs_unique_window_before_insert ON pgwake.jobs;
DROP TRIGGER jobs_depends_on_before_insert ON pgwake.jobs;
DROP TRIGGER jobs_depends_on_unchanging ON pgwake.jobs;

CREATE DOMAIN pgwake.job_priority AS integer;
CREATE DOMAIN pgwake.job_run_at AS timestamptz;
CREATE DOMAIN pgwake.job_max_attempts AS integer;
CREATE DOMAIN pgwake.job_timeout AS interval;
CREATE DOMAIN pgwake.job_attempts AS integer;
CREATE DOMAIN pgwake.job_unique_for AS interval;
CREATE DOMAIN pgwake.job_depends_on AS bigint[];

ALTER TABLE pgwake.jobs
    DROP CONSTRAINT jobs_priority_between_minus_1000_and_1000,
    DROP CONSTRAINT jobs_max_attempts_between_1_and_1000,
    DROP CONSTRAINT jobs_timeout_positive_at_most_7_days,
    DROP CONSTRAINT jobs_unique_for_positive_at_most_366_days,
    DROP CONSTRAINT jobs_unique_for_without_months_or_years,
    DROP CONSTRAINT jobs_attempts_not_negative,
    DROP CONSTRAINT jobs_run_at_between_years_1_and_9999,
    DROP CONSTRAINT jobs_depends_on_at_most_10000,
    DROP CONSTRAINT jobs_depends_on_without_nulls,
    ALTER COLUMN priority TYPE pgwake.job_priority,
    ALTER COLUMN run_at TYPE pgwake.job_run_at,
    ALTER COLUMN max_attempts TYPE pgwake.job_max_attempts,
    ALTER COLUMN timeout TYPE pgwake.job_timeout,
    ALTER COLUMN attempts TYPE pgwake.job_attempts,
    ALTER COLUMN unique_for TYPE pgwake.job_unique_for,
    ALTER COLUMN depends_on TYPE pgwake.job_depends_on;

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

CREATE TRIGGER jobs_schedule_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND NEW.run_at > now())
    EXECUTE FUNCTION pgwake.jobs_before_insert_due_later();

CREATE TRIGGER jobs_unique_window_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (NEW.unique_for IS NOT NULL)
    EXECUTE FUNCTION pgwake.jobs_before_insert_unique_window();

CREATE TRIGGER jobs_depends_on_before_insert
    BEFORE INSERT ON pgwake.jobs
    FOR EACH ROW
    WHEN (cardinality(NEW.depends_on) > 0)
    EXECUTE FUNCTION pgwake.jobs_before_insert_dependencies();

CREATE TRIGGER jobs_depends_on_unchanging
    AFTER UPDATE OF depends_on ON pgwake.jobs
    FOR EACH ROW
    WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on)
    EXECUTE FUNCTION pgwake.jobs_before_update_of_depends_on();

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

CREATE OR REPLACE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
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
