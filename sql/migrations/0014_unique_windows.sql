-- pgwake: compatible
-- 0014_unique_windows: unique over a time window. A job inserted with unique_key and
-- unique_for (an interval) holds its key for the window of that period it was
-- inserted in, even after it finished: a second job of the same tenant, kind, key and
-- period inserted in the same window is refused by the unique index
-- jobs_unique_window_idx (or skipped by INSERT ... ON CONFLICT DO NOTHING), one
-- inserted in a later window is accepted. "While active" (jobs_unique_key_idx) applies
-- beside it, unchanged.
--
-- Windows are fixed (as pg-boss's singletonSeconds): the windows of a period P are the
-- intervals [origin + n*P, origin + (n+1)*P) counted from Monday 2001-01-01 00:00 UTC,
-- so a period that divides a day starts at midnight UTC and 7 days start on Mondays. A
-- row trigger (called only for rows with unique_for) writes the end of the window of
-- the inserting transaction's now() into unique_until, so the uniqueness is an index's:
-- race-free across any number of sessions, and ON CONFLICT works with it. A sliding
-- window ("none in the last P") cannot be a unique index: it would need a lock and a
-- look in a trigger, which raises instead of letting ON CONFLICT DO NOTHING skip, and
-- costs every insert a wait for the others of its key.
--
-- Retention and `pgwake jobs purge` keep a finished job until its window has ended
-- (the index needs the row).
--
-- Compatible with workers of 0013: they never read the new columns and never write
-- them (their schedules and `pgwake enqueue` insert no unique_for), so nothing they
-- write is refused by the new constraints, and the trigger does nothing for their rows.
-- One thing is weaker during a rolling upgrade: a worker of 0013 that leads retention
-- deletes a finished job by its age alone, so a job whose window is longer than its
-- status's retention (by default a day for succeeded jobs) may be deleted before its
-- window ends, and a second job of its key accepted in that window. Use windows longer
-- than the retention once every worker runs this version.

ALTER TABLE pgwake.jobs ADD COLUMN unique_for interval;
ALTER TABLE pgwake.jobs ADD COLUMN unique_until timestamptz;

-- Constraints are checked in the order of their names, so a bad period is named
-- before the consequence that it has no window.
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_unique_for_needs_unique_key
    CHECK (unique_for IS NULL OR unique_key IS NOT NULL);
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_unique_for_positive_at_most_366_days
    CHECK (unique_for IS NULL OR (unique_for > interval '0' AND unique_for <= interval '366 days'));
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_unique_for_without_months_or_years
    CHECK (unique_for IS NULL
           OR (date_part('month', unique_for) = 0 AND date_part('year', unique_for) = 0));
ALTER TABLE pgwake.jobs ADD CONSTRAINT jobs_unique_until_with_unique_for
    CHECK ((unique_for IS NULL) = (unique_until IS NULL));

COMMENT ON TABLE pgwake.jobs IS
    'pgwake job queue. Apps INSERT (tenant_id, kind, payload[, priority, run_at, max_attempts, unique_key, unique_for, timeout]); everything else belongs to the worker.';

-- unique_key with unique_for: at most one job per tenant, kind, key and period in each
-- window of the period, whatever its status. Apps may rely on INSERT ... ON CONFLICT
-- DO NOTHING (with no conflict target, it covers this index and jobs_unique_key_idx).
CREATE UNIQUE INDEX jobs_unique_window_idx
    ON pgwake.jobs (tenant_id, kind, unique_key, unique_for, unique_until)
    WHERE unique_until IS NOT NULL;

-- The end of the window a job with unique_for is inserted in. A period the CHECK
-- constraints refuse gets no window (they name the problem; date_bin would raise a
-- message of its own). The end is the window's start plus the period in seconds, not
-- as an interval: adding '1 day' to a timestamptz adds a calendar day of the session's
-- time zone, and every session must compute the same end.
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

-- Confined application roles may set unique_for: the roles confined so far, and those
-- confined from now on.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN SELECT DISTINCT r.role_name FROM pgwake.tenant_roles AS r
                    JOIN pg_catalog.pg_roles AS g ON g.rolname = r.role_name LOOP
        EXECUTE format('GRANT INSERT (unique_for) ON pgwake.jobs TO %I', v_role);
    END LOOP;
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
        'unique_key, unique_for, timeout) ON pgwake.jobs TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE pgwake.jobs_id_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON pgwake.queue_status, pgwake.failed_jobs, '
                   'pgwake.tenant_backlog TO %I', p_role);
    EXECUTE format('GRANT SELECT (tenant_id, max_concurrency, weight, paused) '
                   'ON pgwake.tenants TO %I', p_role);
    INSERT INTO pgwake.tenant_roles (role_name, tenant_id) VALUES (p_role, p_tenant_id)
    ON CONFLICT DO NOTHING;
END;
$$;
