-- pgwake: compatible
-- 0010_hostile_rows: rows PostgreSQL accepts but no worker could handle are refused at
-- INSERT, by named CHECKs that cost a comparison or two.
--
-- run_at: 'infinity' and '-infinity' made the promoter's next-due query fail ("cannot
-- subtract infinite timestamps") and every worker exit; a finite run_at outside years
-- 1 to 9999 (UTC) cannot be represented by most clients (Python's datetime among them),
-- so the claim that read one failed for its whole batch. Both are refused now; every
-- value left is one whose arithmetic (now() - run_at) and decoding cannot fail.
--
-- Schedules get the jobs table's own checks for what they copy into jobs (tenant_id,
-- payload size), so a schedule whose jobs the jobs table would refuse is refused
-- itself, in the same words; and the same range for next_run_at and last_slot. What
-- cannot be checked cheaply here is left to the leader, which disables such a schedule
-- with the reason (listener/schedules.py).
--
-- Editing a schedule's cron or time zone takes effect at once: a trigger clears
-- next_run_at (unless the same UPDATE changes it too), and the next round of the leader
-- computes the first slot after now from the new cron. Before, the slot computed from
-- the old cron was still enqueued once.

-- Rows written before this version that the new checks would refuse: a job whose run_at
-- no worker could read fails now, for good, with the reason and the old run_at in
-- last_error (run_at is set to the nearest allowed instant, so the row stays); nothing
-- else changes.
UPDATE pgwake.jobs
   SET last_error = 'run_at ' || run_at::text
                    || ' is outside years 1 to 9999 (UTC); set to the nearest allowed instant'
                    || coalesce(E'\n' || last_error, ''),
       run_at = CASE WHEN run_at < '0001-01-01 00:00:00+00'
                     THEN timestamptz '0001-01-01 00:00:00+00'
                     ELSE timestamptz '9999-12-31 23:59:59+00' END,
       status = CASE WHEN status IN ('succeeded', 'failed', 'cancelled') THEN status
                     ELSE 'failed' END,
       finished_at = coalesce(finished_at, now()),
       claimed_by = NULL
 WHERE NOT (run_at >= '0001-01-01 00:00:00+00' AND run_at < '10000-01-01 00:00:00+00');

ALTER TABLE pgwake.jobs
    ADD CONSTRAINT jobs_run_at_between_years_1_and_9999
        CHECK (run_at >= '0001-01-01 00:00:00+00' AND run_at < '10000-01-01 00:00:00+00');

-- A schedule that cannot enqueue its jobs (blank or over 200-character tenant, payload
-- over 1 MiB) made every leader round fail; it could never have enqueued anything. The
-- check below would refuse it, and there is no value to put in its place: the migration
-- stops with the names, for an operator to fix or remove them.
DO $$
DECLARE
    v_names text;
BEGIN
    SELECT string_agg(quote_literal(s.name), ', ' ORDER BY s.name) INTO v_names
      FROM pgwake.schedules AS s
     WHERE NOT (s.tenant_id IS NULL
                OR (length(btrim(s.tenant_id)) > 0 AND length(s.tenant_id) <= 200))
        OR octet_length(s.payload::text) > 1048576;
    IF v_names IS NOT NULL THEN
        RAISE EXCEPTION 'schedules % cannot enqueue their jobs (a blank or over 200-character tenant_id, or a payload over 1 MiB); fix or remove them, then migrate again', v_names;
    END IF;
END;
$$;

UPDATE pgwake.schedules
   SET next_run_at = NULL
 WHERE NOT (next_run_at >= '0001-01-01 00:00:00+00' AND next_run_at < '10000-01-01 00:00:00+00');

UPDATE pgwake.schedules
   SET last_slot = NULL
 WHERE NOT (last_slot >= '0001-01-01 00:00:00+00' AND last_slot < '10000-01-01 00:00:00+00');

ALTER TABLE pgwake.schedules
    ADD CONSTRAINT schedules_tenant_id_not_empty
        CHECK (tenant_id IS NULL
               OR (length(btrim(tenant_id)) > 0 AND length(tenant_id) <= 200)),
    ADD CONSTRAINT schedules_payload_at_most_1mib
        CHECK (octet_length(payload::text) <= 1048576),
    ADD CONSTRAINT schedules_next_run_at_between_years_1_and_9999
        CHECK (next_run_at >= '0001-01-01 00:00:00+00' AND next_run_at < '10000-01-01 00:00:00+00'),
    ADD CONSTRAINT schedules_last_slot_between_years_1_and_9999
        CHECK (last_slot >= '0001-01-01 00:00:00+00' AND last_slot < '10000-01-01 00:00:00+00');

-- An edit of cron or timezone takes effect at once (see above).
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
