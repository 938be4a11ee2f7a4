-- pgwake: compatible
-- 0020_inline_wait_checks: pgwake.someone_waits and pgwake.events_wanted become plain
-- SQL expressions the planner inlines into the statements that call them, instead of
-- functions called at every execution.
--
-- Every claim and every outcome write asks pgwake.events_wanted() whether a session
-- follows job events. As a SQL function with a SET clause it could not be inlined: each
-- execution parsed and planned its body again and called the PL/pgSQL someone_waits(1)
-- under a new GUC nest level, about 40 microseconds of backend CPU per claim and per
-- outcome write, a fifth of the fixed cost of a small claim. Inlined, the expression is
-- part of each statement's cached plan and costs what its lock calls cost.
--
-- Same behaviour: the CASE keeps the order of the checks (the marking lock first, then
-- the session's own waiting flag, then the waiting lock, tried and released at once).
-- Every name is schema-qualified, operators included, since an inlined body is read in
-- the caller's search_path rather than under a SET clause of its own.
--
-- Compatible: both functions keep their signatures and results; workers of 0019 call
-- them as before.

CREATE OR REPLACE FUNCTION pgwake.someone_waits(p_what integer) RETURNS boolean
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

CREATE OR REPLACE FUNCTION pgwake.events_wanted() RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN COALESCE(pg_catalog.current_setting('pgwake.job_events', true), '')
             OPERATOR(pg_catalog.=) 'off' THEN false
        ELSE pgwake.someone_waits(1)
    END;
$$;
