-- Queries of the worker process: registration, heartbeat and liveness lock; the claim,
-- outcomes, put-backs, progress and cancellation of the jobs it runs; the LISTEN
-- connection (listener/heartbeat.py, claimer.py, completer.py, service.py,
-- progress.py, cancels.py, notifications.py, tenant_databases.py).
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.

-- name: worker_register
-- Registers a worker process (on its heartbeat session, which holds or is about to take
-- the liveness lock) and returns the key of its liveness lock. $6 reuses a key the
-- worker already holds the lock for (re-registering after it was declared lost); NULL
-- takes a new one.
-- $1 worker id, $2 hostname, $3 pid, $4 kinds it handles, $5 its concurrency, $6 key.
INSERT INTO pgwake.workers (id, hostname, pid, kinds, concurrency, lock_key, session_pid)
VALUES ($1, $2, $3, $4, $5, coalesce($6::int, nextval('pgwake.worker_lock_keys')::int),
        pg_backend_pid())
RETURNING lock_key;

-- name: worker_lock
-- Takes the worker's liveness lock on the calling session (held until it closes).
-- Returns false when another session holds it.
-- $1 lock key.
SELECT pg_try_advisory_lock(1885828962, $1::int);

-- name: worker_heartbeat
-- One heartbeat for a worker and all the jobs it holds. Returns one row while the worker
-- is registered: the ids of the jobs the database says it runs (held_ids, so it can
-- find claims whose reply it never got) and of those whose cancellation was requested
-- (cancel_ids, in case the NOTIFY was missed). Nothing when it was declared lost.
-- When $2 (this session holds the worker's liveness lock) it also records the session
-- as the lock's holder (session_pid), so that worker_list_lost counts only its lock.
-- $1 worker id, $2 whether this session holds the liveness lock.
WITH held AS (
    SELECT j.id, j.cancel_requested_at
      FROM pgwake.jobs AS j
     WHERE j.claimed_by = $1 AND j.status = 'running'
)
UPDATE pgwake.workers AS w
   SET heartbeat_at = now(),
       session_pid = CASE WHEN $2::bool THEN pg_backend_pid() ELSE w.session_pid END
 WHERE w.id = $1
RETURNING coalesce((SELECT array_agg(h.id) FROM held AS h), '{}') AS held_ids,
          coalesce((SELECT array_agg(h.id) FROM held AS h
                     WHERE h.cancel_requested_at IS NOT NULL), '{}') AS cancel_ids;

-- name: worker_deregister
-- Removes a worker on clean exit (after its jobs were finished or put back).
-- $1 worker id.
DELETE FROM pgwake.workers WHERE id = $1;

-- name: worker_set_claim_session
-- Run on the claim loop's kept connection when it is borrowed from the pool (the pool
-- resets it when it is given back): no bitmap scans for the claims, and every claim
-- runs its statement's one generic plan.
--
-- No bitmap scans: every read of a claim is an ordered probe of an index with a
-- LIMIT: the next tenant after the cursor, a tenant's best jobs. A bitmap scan cannot
-- give rows in order, so the plan that uses one reads every row of the range and sorts
-- them, and PostgreSQL picks it whenever the statistics make the range look small: a
-- table not analyzed since it was empty, or one analyzed while the queue held a
-- trickle. Then each claim of a burst read the whole queue up to the cursor (20,000 to
-- 110,000 rows for a claim of 1,000 out of 20,000 jobs; 4 ms of each claim of 300 rows
-- in a drain). With bitmap scans off the ordered probe is the plan, whatever the
-- statistics say.
--
-- The generic plan, always: with sequential and bitmap scans off, the claims' plans
-- are the same index probes for any values, so planning a claim for its values gains
-- nothing, and it costs as much as running the claim (a recursive walk, a dozen CTEs).
-- Left to choose, PostgreSQL plans every run afresh once a new generic plan (made
-- after autovacuum's ANALYZE of a growing table) costs more than the average of the
-- statement's first custom plans, made while the table was small. Beside 8 producers
-- inserting single rows that happened in 3 of 6 runs of 10 to 15 s; in one, 327 of
-- 567 claims were planned afresh, 3 ms each (pg_stat_statements: 972 ms of planning
-- against 1,379 ms of execution).
-- No parameters.
SELECT set_config('enable_bitmapscan', 'off', false),
       set_config('plan_cache_mode', 'force_generic_plan', false);

-- name: job_claim
-- Claims up to $3 ready jobs for worker $1, by priority across tenants and fairly
-- among equal priorities.
--
-- Priority: a higher-priority ready job starts before lower-priority jobs of any
-- tenant. The claim finds the highest and lowest priority of the ready jobs it may take
-- (levels); when they differ, the walk takes first the tenants holding jobs of the
-- highest priority, and the claimed rows are ordered by priority before the fair
-- interleaving. While every ready job has the same priority (the usual case) this
-- costs two index probes.
--
-- Tenants with ready jobs are walked in tenant_id order starting just after the cursor
-- $7 and wrapping around (a loose index scan on jobs_ready_idx: one index probe per
-- tenant, whatever the backlog); paused tenants are passed over. Each tenant gets at
-- most its free slots: the local cap $4 minus what it runs in this worker, and for a
-- tenant with max_concurrency its free fleet-wide slots (pgwake.tenant_free_slots,
-- serialised per tenant by an advisory lock). Its best jobs (priority, then age) are
-- locked with FOR UPDATE SKIP LOCKED, so concurrent claimers never take the same job,
-- and the rows are interleaved by weight: every tenant's first job(s) before any
-- tenant's next, so a tenant with one job is served in the same claim as a tenant with
-- 100,000.
--
-- Rate limits (pgwake.rate_windows): a tenant with a rate limit gets at most its free
-- starts (pgwake.rate_free, which locks the tenant's window row), and a tenant whose
-- window is full is passed over by the walk until it opens, so it holds no walk place
-- or slot it cannot use. Kinds limited across tenants whose window is full are left
-- out of the claim (open_kinds), likewise kinds limited per tenant for the tenants
-- whose window of the kind is full; the jobs of a limited kind the candidates include
-- are then cut to the kind's free starts (locking its window row, only for the kinds
-- the candidates meet), and every start is recorded under each key it counts against
-- (pgwake.rate_record) before the locks are released. Without any limit on the
-- tenants walked or the kinds of $2 this costs one probe of pgwake.limits.
--
-- $1 worker id (uuid)
-- $2 kinds this worker has handlers for (text[])
-- $3 how many jobs to claim at most (int)
-- $4 per-tenant cap of claimed jobs inside this worker (int)
-- $5 tenants that already have jobs claimed in this worker (text[])
-- $6 how many each of those counts against $4, same order as $5 (int[]; below its
--    claimed jobs, even below zero, for a tenant the worker lets borrow idle slots)
-- $7 round-robin cursor: the tenant served last (text; '' to start at the beginning)
-- Returns the claimed jobs, already marked running with attempts incremented, then
-- one row with id NULL giving walk_end (the last tenant visited), walked (how many),
-- more (a tenant was held to its share of $3, a locked job was left queued, or a kind
-- limit cut the candidates: claim again at once) and reopens_in (seconds until the
-- earliest full rate limit window of a tenant or of one of the kinds $2 opens again;
-- NULL when none is full).
WITH RECURSIVE
-- The worker must still be registered: a worker declared lost claims nothing until it
-- registers again. KEY SHARE makes the leader's recovery of this worker wait for the
-- claim to commit, and a claim that comes after it find no row.
me AS (
    SELECT w.id FROM pgwake.workers AS w WHERE w.id = $1 FOR KEY SHARE
),
local_running AS (
    SELECT b.tenant_id, b.running
      FROM unnest($5::text[], $6::int[]) AS b(tenant_id, running)
),
-- The rate limits on the kinds of $2 (usually none: one probe of the primary key).
kind_limits AS MATERIALIZED (
    SELECT l.kind, l.per_tenant, l.rate_limit, l.rate_period
      FROM pgwake.limits AS l
     WHERE l.kind = ANY ($2::text[])
),
-- The kinds this claim may take: those of $2, less the kinds limited across tenants
-- whose window is full right now.
open_kinds AS MATERIALIZED (
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM kind_limits AS l WHERE NOT l.per_tenant)
                THEN $2::text[]
                ELSE ARRAY(SELECT k.kind
                             FROM unnest($2::text[]) AS k(kind)
                            WHERE NOT EXISTS (
                                    SELECT 1 FROM pgwake.rate_windows AS r
                                     WHERE r.scope = 'kind' AND r.kind = k.kind
                                       AND r.tenant_id = '' AND r.full_until > now()))
           END AS kinds
),
-- The highest priority above the default (0) among the ready jobs of the kinds open to
-- this claim, and the lowest ready priority with 0 counted in: one or two probes of
-- jobs_ready_priority_idx, which holds only ready jobs whose priority is not 0 (so an
-- enqueue at the default priority does not maintain it, and a claim while nobody sets
-- priority finds it empty at once). When a job above 0 is ready (top > bottom), the
-- walk takes the tenants holding jobs of the highest priority first (top_after,
-- top_before). Jobs below 0 are not looked up across tenants: within a claim they come
-- after the others (the claimed rows are ordered by priority), but the walk visits
-- tenants in turn.
levels AS MATERIALIZED (
    SELECT t.top, least(t.low, 0) AS bottom
      FROM (SELECT (SELECT j.priority FROM pgwake.jobs AS j
                     WHERE j.status = 'queued' AND j.priority <> 0 AND j.priority > 0
                       AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
                     ORDER BY j.priority DESC LIMIT 1) AS top,
                   (SELECT j.priority FROM pgwake.jobs AS j
                     WHERE j.status = 'queued' AND j.priority <> 0
                       AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
                     ORDER BY j.priority LIMIT 1) AS low) AS t
),
-- Tenants holding ready jobs of the highest priority, after the cursor then from the
-- beginning (one probe of jobs_ready_priority_idx per tenant, as the walk below);
-- nothing at all while every ready job has the same priority.
top_after (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE (SELECT l.top > l.bottom FROM levels AS l)
        AND j.status = 'queued' AND j.priority <> 0 AND j.priority = (SELECT l.top FROM levels AS l)
        AND j.tenant_id > $7::text AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.priority <> 0 AND j.priority = (SELECT l.top FROM levels AS l)
               AND j.tenant_id > a.tenant_id AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           a.step + 1
      FROM top_after AS a
     WHERE a.tenant_id IS NOT NULL
),
top_before (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE (SELECT l.top > l.bottom FROM levels AS l)
        AND j.status = 'queued' AND j.priority <> 0 AND j.priority = (SELECT l.top FROM levels AS l)
        AND j.tenant_id <= $7::text AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.priority <> 0 AND j.priority = (SELECT l.top FROM levels AS l)
               AND j.tenant_id > b.tenant_id AND j.tenant_id <= $7::text
               AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           b.step + 1
      FROM top_before AS b
     WHERE b.tenant_id IS NOT NULL
),
-- Tenants after the cursor, in order: each step finds the next tenant_id that has a
-- queued job of our kinds with one probe of jobs_ready_idx. The probe reads the queued
-- jobs of other kinds it passes (their kind is in the row, not in the index), so a
-- tenant whose jobs are all of kinds this worker does not handle costs the walk those
-- reads, never a step: however many such tenants there are, the walk reaches the next
-- tenant with work for us in the same claim.
after_cursor (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE j.status = 'queued' AND j.tenant_id > $7::text AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > a.tenant_id
               AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           a.step + 1
      FROM after_cursor AS a
     WHERE a.tenant_id IS NOT NULL
),
-- The wrap-around: tenants from the beginning up to and including the cursor.
before_cursor (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE j.status = 'queued' AND j.tenant_id <= $7::text AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > b.tenant_id AND j.tenant_id <= $7::text
               AND j.kind = ANY ((SELECT o.kinds FROM open_kinds AS o)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           b.step + 1
      FROM before_cursor AS b
     WHERE b.tenant_id IS NOT NULL
),
-- At most $3 tenants, in round-robin order, that are not paused, not held back by a
-- full rate limit window, and still have a free local slot: first those holding jobs
-- of the highest ready priority (when not every ready job has the same), then the
-- others, each tenant once. The walk is lazy: it stops
-- as soon as enough tenants are found. The paused check is a scalar subquery on
-- purpose: one primary-key probe per walked tenant, where a join could scan every row
-- of pgwake.tenants (and one more probe, of its window, for a rate-limited tenant).
walk AS MATERIALIZED (
    SELECT d.tenant_id, d.lap, d.step
      FROM (SELECT DISTINCT ON (w.tenant_id) w.tenant_id, w.lap, w.step
              FROM (
            (SELECT tenant_id, -2 AS lap, step FROM top_after AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused
                            OR (p.rate_limit IS NOT NULL
                                AND EXISTS (SELECT 1 FROM pgwake.rate_windows AS r
                                             WHERE r.scope = 'tenant' AND r.kind = ''
                                               AND r.tenant_id = p.tenant_id
                                               AND r.full_until > now()))
                       FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
            UNION ALL
            (SELECT tenant_id, -1 AS lap, step FROM top_before AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused
                            OR (p.rate_limit IS NOT NULL
                                AND EXISTS (SELECT 1 FROM pgwake.rate_windows AS r
                                             WHERE r.scope = 'tenant' AND r.kind = ''
                                               AND r.tenant_id = p.tenant_id
                                               AND r.full_until > now()))
                       FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
            UNION ALL
            (SELECT tenant_id, 1 AS lap, step FROM after_cursor AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused
                            OR (p.rate_limit IS NOT NULL
                                AND EXISTS (SELECT 1 FROM pgwake.rate_windows AS r
                                             WHERE r.scope = 'tenant' AND r.kind = ''
                                               AND r.tenant_id = p.tenant_id
                                               AND r.full_until > now()))
                       FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
            UNION ALL
            (SELECT tenant_id, 2 AS lap, step FROM before_cursor AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused
                            OR (p.rate_limit IS NOT NULL
                                AND EXISTS (SELECT 1 FROM pgwake.rate_windows AS r
                                             WHERE r.scope = 'tenant' AND r.kind = ''
                                               AND r.tenant_id = p.tenant_id
                                               AND r.full_until > now()))
                       FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
                   ) AS w
             ORDER BY w.tenant_id, w.lap, w.step) AS d
     ORDER BY d.lap, d.step
     LIMIT $3::int
),
-- Free slots per walked tenant: local, fleet-wide for capped tenants, and free starts
-- for rate-limited ones; and the kinds it may take (open_kinds, less the kinds limited
-- per tenant whose window for it is full). Computed only for the tenants the walk kept
-- (the row locks are never taken for others).
slots_free AS MATERIALIZED (
    SELECT w.tenant_id,
           row_number() OVER (ORDER BY w.lap, w.step) AS pos,
           count(*) OVER () AS walked,
           coalesce(s.weight, 1) AS weight,
           s.rate_limit, s.rate_period,
           CASE WHEN s.max_concurrency IS NULL AND s.rate_limit IS NULL
                THEN $4::int - coalesce(r.running, 0)
                ELSE least($4::int - coalesce(r.running, 0),
                           CASE WHEN s.max_concurrency IS NOT NULL
                                THEN pgwake.tenant_free_slots(w.tenant_id, s.max_concurrency)
                           END,
                           CASE WHEN s.rate_limit IS NOT NULL
                                THEN pgwake.rate_free('tenant', '', w.tenant_id,
                                                      s.rate_limit, s.rate_period)
                           END)
           END AS free,
           CASE WHEN NOT EXISTS (SELECT 1 FROM kind_limits AS l WHERE l.per_tenant)
                THEN (SELECT o.kinds FROM open_kinds AS o)
                ELSE ARRAY(SELECT k.kind
                             FROM unnest((SELECT o.kinds FROM open_kinds AS o)) AS k(kind)
                            WHERE NOT EXISTS (
                                    SELECT 1 FROM pgwake.rate_windows AS rw
                                     WHERE rw.scope = 'kind_tenant' AND rw.kind = k.kind
                                       AND rw.tenant_id = w.tenant_id
                                       AND rw.full_until > now()))
           END AS kinds
      FROM walk AS w
      LEFT JOIN local_running AS r ON r.tenant_id = w.tenant_id
      -- LIMIT 1 keeps this a per-tenant primary-key probe (never a scan of all tenants).
      LEFT JOIN LATERAL (SELECT t.weight, t.max_concurrency, t.rate_limit, t.rate_period
                           FROM pgwake.tenants AS t
                          WHERE t.tenant_id = w.tenant_id
                          LIMIT 1) AS s ON true
),
-- How many jobs each tenant may have locked for this claim: its free slots, and its
-- share of $3 by weight (an even split), so that a claim locks about the $3 rows it
-- takes, not $3 per tenant. A tenant held to its share sets `more`, and the worker
-- claims again at once: one more claim when tenants' backlogs differ, none when they
-- are all deep.
slots AS (
    SELECT t.tenant_id, t.pos, t.weight, t.free, t.kinds,
           least(t.free, $3::int, t.weight * ceil(1.0 * $3::int / t.walked)::int) AS share
      FROM slots_free AS t
),
-- Each tenant's best ready jobs of the kinds it may take, at most its share, locked.
candidates AS MATERIALIZED (
    SELECT c.id, c.ctid, c.kind, c.priority, t.tenant_id, t.pos, c.rn,
           (c.rn - 1) / t.weight AS round,
           -- The share, not the free slots, stopped this tenant: it may have more.
           c.rn = t.share AND t.share < least(t.free, $3::int) AS share_full
      FROM slots AS t
     CROSS JOIN LATERAL (
            SELECT j.id, j.ctid, j.kind, j.priority, row_number() OVER () AS rn
              FROM (SELECT j.id, j.ctid, j.kind, j.priority
                      FROM pgwake.jobs AS j
                     WHERE j.tenant_id = t.tenant_id
                       AND j.status = 'queued'
                       AND j.run_at <= now()
                       AND j.kind = ANY (t.kinds)
                     ORDER BY j.priority DESC, j.run_at, j.id
                     LIMIT t.share
                       FOR UPDATE SKIP LOCKED) AS j
           ) AS c
     WHERE t.share > 0
),
-- Free starts of each kind limit the candidates meet, its window row locked: once per
-- claim for a kind limited across tenants (tenant_id ''), once per tenant for a kind
-- limited per tenant. Empty, and nothing locked, without kind limits.
kind_free AS MATERIALIZED (
    SELECT k.kind, k.tenant_id, k.rate_limit, k.rate_period,
           pgwake.rate_free(k.scope, k.kind, k.tenant_id, k.rate_limit, k.rate_period) AS free
      FROM (SELECT DISTINCT l.kind, l.rate_limit, l.rate_period,
                   CASE WHEN l.per_tenant THEN 'kind_tenant' ELSE 'kind' END AS scope,
                   CASE WHEN l.per_tenant THEN c.tenant_id ELSE '' END AS tenant_id
              FROM candidates AS c
              JOIN kind_limits AS l ON l.kind = c.kind) AS k
),
-- The candidates within their kinds' free starts, higher priorities and then first
-- rounds first. Without kind limits met (kind_free empty) the candidates as they are:
-- the ranking below is not even computed.
within_limits AS (
    SELECT c.id, c.ctid, c.priority, c.round, c.pos
      FROM candidates AS c
     WHERE NOT EXISTS (SELECT 1 FROM kind_free)
    UNION ALL
    SELECT c.id, c.ctid, c.priority, c.round, c.pos
      FROM (SELECT c.*,
                   row_number() OVER (PARTITION BY c.kind
                                      ORDER BY c.priority DESC, c.round, c.pos, c.rn)
                       AS kind_rank,
                   row_number() OVER (PARTITION BY c.kind, c.tenant_id
                                      ORDER BY c.priority DESC, c.round, c.pos, c.rn)
                       AS tenant_kind_rank
              FROM candidates AS c) AS c
     WHERE NOT EXISTS (SELECT 1 FROM kind_free AS f
                        WHERE f.kind = c.kind AND f.tenant_id = '' AND c.kind_rank > f.free)
       AND NOT EXISTS (SELECT 1 FROM kind_free AS f
                        WHERE f.kind = c.kind AND f.tenant_id = c.tenant_id
                          AND c.tenant_kind_rank > f.free)
       AND EXISTS (SELECT 1 FROM kind_free)
),
-- Higher priorities first, whatever the tenant; among equal priorities, interleave
-- tenants by weight: every tenant's first round before any tenant's second.
chosen AS (
    SELECT id, ctid FROM within_limits WHERE EXISTS (SELECT 1 FROM me)
     ORDER BY priority DESC, round, pos LIMIT $3::int
),
-- The locked rows go in as an array of ctids so the update reads them directly (a Tid
-- Scan, no index probe) whatever the planner guesses for LIMIT $3. A ctid is stable
-- while the row is locked.
claimed AS (
    UPDATE pgwake.jobs AS j
       SET status = 'running',
           claimed_by = $1,
           attempts = j.attempts + 1,
           started_at = now()
     WHERE j.ctid = ANY (ARRAY(SELECT ctid FROM chosen))
    -- payload as jsonb, the base type of its domain (pgwake.job_payload): the client
    -- decodes it without looking the domain up; the times as seconds since the epoch
    -- (float8), which the client decodes far faster than a timestamptz into a datetime
    -- (all four claims do the same).
    RETURNING j.id, j.tenant_id, j.kind, j.payload::jsonb AS payload, j.priority,
              j.attempts, j.max_attempts,
              extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
              date_part('epoch', j.created_at) AS created_epoch,
              date_part('epoch', j.run_at) AS run_epoch,
              date_part('epoch', j.started_at) AS started_epoch
),
-- The starts of this claim under each rate limit key they count against, recorded
-- while its row is still locked; each call returns when its key opens again if the
-- claim filled it.
recorded AS MATERIALIZED (
    SELECT pgwake.rate_record(k.scope, k.kind, k.tenant_id, k.started, k.rate_limit,
                              k.rate_period) AS full_until
      FROM (SELECT 'tenant' AS scope, '' AS kind, c.tenant_id, count(*)::int AS started,
                   s.rate_limit, s.rate_period
              FROM claimed AS c
              JOIN slots_free AS s ON s.tenant_id = c.tenant_id
             WHERE s.rate_limit IS NOT NULL
             GROUP BY c.tenant_id, s.rate_limit, s.rate_period
            UNION ALL
            SELECT CASE WHEN f.tenant_id = '' THEN 'kind' ELSE 'kind_tenant' END, f.kind,
                   f.tenant_id, count(*)::int, f.rate_limit, f.rate_period
              FROM claimed AS c
              JOIN kind_free AS f
                ON f.kind = c.kind AND f.tenant_id IN ('', c.tenant_id)
             GROUP BY f.kind, f.tenant_id, f.rate_limit, f.rate_period) AS k
)
SELECT c.*, NULL::text AS walk_end, NULL::bigint AS walked, NULL::boolean AS more,
       NULL::float8 AS reopens_in
  FROM claimed AS c
UNION ALL
-- One last row (id NULL) says where the walk ended and how many tenants it visited, so
-- the next claim continues after it; a walk that visited $3 tenants may have stopped
-- short of more (for example past tenants whose jobs are all of other kinds). `more`
-- says a tenant was held to its share and may have more ready jobs right now.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT w.tenant_id FROM walk AS w ORDER BY w.lap DESC, w.step DESC LIMIT 1),
       (SELECT count(*) FROM walk),
       EXISTS (SELECT 1 FROM candidates WHERE share_full)
           -- A locked row whose newest version this statement cannot see (another
           -- transaction updated it after the claim began) is not updated by its ctid:
           -- it stays queued, and the next claim, right away, takes it.
           OR (SELECT count(*) FROM chosen) > (SELECT count(*) FROM claimed)
           -- A kind limit cut the candidates: the next claim leaves a full kind out.
           OR (SELECT count(*) FROM candidates) > (SELECT count(*) FROM within_limits),
       -- The earliest full window to open: of this claim's keys, or of those it saw
       -- full (a tenant, or a kind of $2).
       extract(epoch FROM least(
           (SELECT min(r.full_until) FROM recorded AS r),
           (SELECT min(w.full_until) FROM pgwake.rate_windows AS w
             WHERE w.full_until > now() AND (w.kind = '' OR w.kind = ANY ($2::text[]))))
           - clock_timestamp())::float8
 -- One job event per claimed job, all in one call; when nobody follows job events (or
 -- they are off) the arrays are not even built.
 WHERE (SELECT count(*) FROM recorded) >= 0
   AND (NOT pgwake.events_wanted()
        OR (SELECT pgwake.job_events(array_agg(c.id), array_agg(c.tenant_id),
                                     array_agg(c.kind), array_agg('running'::text))
              FROM claimed AS c) >= 0);

-- name: job_claim_plain
-- job_claim for a queue where nothing but fairness decides: no rate limit on the kinds
-- of $2 and no ready job of those kinds with a priority above 0. The worker runs it
-- while that holds and the full claim otherwise: a claim costs the database about a
-- quarter less (half the plan nodes: no priority levels, no limits' windows), on every claim of
-- a backlog or a stream. It checks the condition itself, with two probes, and claims
-- nothing when it fails (needs_full); a tenant with a rate limit of its own gets
-- nothing from it either (needs_full too), so a limit is never passed over: the worker
-- runs the full claim at once. Otherwise its jobs are the full claim's, in the same
-- order (tests/test_claim_plain.py holds the two to that).
--
-- Tenants with ready jobs are walked in tenant_id order starting just after the cursor
-- $7 and wrapping around (a loose index scan on jobs_ready_idx: one index probe per
-- tenant, whatever the backlog); paused tenants are passed over. Each tenant gets at
-- most its free slots: the local cap $4 minus what it runs in this worker, and for a
-- tenant with max_concurrency its free fleet-wide slots (pgwake.tenant_free_slots,
-- serialised per tenant by an advisory lock). Its best jobs (priority, then age) are
-- locked with FOR UPDATE SKIP LOCKED, so concurrent claimers never take the same job,
-- and the rows are interleaved by weight: every tenant's first job(s) before any
-- tenant's next, so a tenant with one job is served in the same claim as a tenant with
-- 100,000; jobs below the default priority come after the others.
--
-- $1 worker id (uuid)
-- $2 kinds this worker has handlers for (text[])
-- $3 how many jobs to claim at most (int)
-- $4 per-tenant cap of claimed jobs inside this worker (int)
-- $5 tenants that already have jobs claimed in this worker (text[])
-- $6 how many each of those counts against $4, same order as $5 (int[])
-- $7 round-robin cursor: the tenant served last (text; '' to start at the beginning)
-- Returns the claimed jobs, already marked running with attempts incremented, then
-- one row with id NULL giving walk_end, walked and more as job_claim does, reopens_in
-- (always NULL) and needs_full (run job_claim instead: a rate limit or a priority
-- above 0 is in play).
WITH RECURSIVE
-- The worker must still be registered: a worker declared lost claims nothing until it
-- registers again. KEY SHARE makes the leader's recovery of this worker wait for the
-- claim to commit, and a claim that comes after it find no row.
me AS (
    SELECT w.id FROM pgwake.workers AS w WHERE w.id = $1 FOR KEY SHARE
),
local_running AS (
    SELECT b.tenant_id, b.running
      FROM unnest($5::text[], $6::int[]) AS b(tenant_id, running)
),
-- The kinds of $2 as a value the planner cannot see: a custom plan made while the
-- statistics still say the queue is empty (the first claims after a burst) would
-- otherwise read every queued job of those kinds with a bitmap scan and sort them at
-- each step of the walk (1.3 s for the first claim of a 100,000-job burst), instead of
-- one ordered probe of jobs_ready_idx per step, as job_claim does through open_kinds.
kinds AS MATERIALIZED (
    SELECT $2::text[] AS kinds
),
-- Whether this claim may decide alone: no rate limit on the kinds of $2 (one probe of
-- pgwake.limits) and no ready job of them above the default priority (one probe of
-- jobs_ready_priority_idx, empty while nobody sets priority).
plain AS MATERIALIZED (
    SELECT NOT EXISTS (SELECT 1 FROM pgwake.limits AS l WHERE l.kind = ANY ($2::text[]))
           AND NOT EXISTS (SELECT 1 FROM pgwake.jobs AS j
                            WHERE j.status = 'queued' AND j.priority <> 0 AND j.priority > 0
                              AND j.kind = ANY ($2::text[])) AS ok
),
-- Tenants after the cursor, in order: each step finds the next tenant_id that has a
-- queued job of our kinds with one probe of jobs_ready_idx. The probe reads the queued
-- jobs of other kinds it passes (their kind is in the row, not in the index), so a
-- tenant whose jobs are all of kinds this worker does not handle costs the walk those
-- reads, never a step: however many such tenants there are, the walk reaches the next
-- tenant with work for us in the same claim.
after_cursor (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE j.status = 'queued' AND j.tenant_id > $7::text AND j.kind = ANY ((SELECT k.kinds FROM kinds AS k)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > a.tenant_id
               AND j.kind = ANY ((SELECT k.kinds FROM kinds AS k)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           a.step + 1
      FROM after_cursor AS a
     WHERE a.tenant_id IS NOT NULL
),
-- The wrap-around: tenants from the beginning up to and including the cursor.
before_cursor (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE j.status = 'queued' AND j.tenant_id <= $7::text AND j.kind = ANY ((SELECT k.kinds FROM kinds AS k)::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > b.tenant_id AND j.tenant_id <= $7::text
               AND j.kind = ANY ((SELECT k.kinds FROM kinds AS k)::text[])
             ORDER BY j.tenant_id
             LIMIT 1),
           b.step + 1
      FROM before_cursor AS b
     WHERE b.tenant_id IS NOT NULL
),
-- At most $3 tenants, in round-robin order, that are not paused and still have a free
-- local slot. The walk is lazy: it stops as soon as enough tenants are found. The paused
-- check is a scalar subquery on purpose: one primary-key probe per walked tenant, where
-- a join could scan every row of pgwake.tenants.
walk AS MATERIALIZED (
    SELECT w.tenant_id, w.lap, w.step
      FROM (
            (SELECT tenant_id, 1 AS lap, step FROM after_cursor AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
            UNION ALL
            (SELECT tenant_id, 2 AS lap, step FROM before_cursor AS c
              WHERE tenant_id IS NOT NULL
                AND tenant_id NOT IN (SELECT tenant_id FROM local_running WHERE running >= $4::int)
                AND (SELECT p.paused FROM pgwake.tenants AS p
                      WHERE p.tenant_id = c.tenant_id) IS NOT TRUE
              LIMIT $3::int)
           ) AS w
     ORDER BY w.lap, w.step
     LIMIT $3::int
),
-- Free slots per walked tenant: local, and fleet-wide for capped tenants; none for a
-- tenant with a rate limit (the full claim weighs it). Computed only for the tenants
-- the walk kept (the advisory lock is never taken for others).
slots_free AS MATERIALIZED (
    SELECT w.tenant_id,
           row_number() OVER (ORDER BY w.lap, w.step) AS pos,
           count(*) OVER () AS walked,
           coalesce(s.weight, 1) AS weight,
           s.rate_limit IS NOT NULL AS rate_limited,
           CASE WHEN s.rate_limit IS NOT NULL THEN 0
                WHEN s.max_concurrency IS NULL
                THEN $4::int - coalesce(r.running, 0)
                ELSE least($4::int - coalesce(r.running, 0),
                           pgwake.tenant_free_slots(w.tenant_id, s.max_concurrency))
           END AS free
      FROM walk AS w
      LEFT JOIN local_running AS r ON r.tenant_id = w.tenant_id
      -- LIMIT 1 keeps this a per-tenant primary-key probe (never a scan of all tenants).
      LEFT JOIN LATERAL (SELECT t.weight, t.max_concurrency, t.rate_limit
                           FROM pgwake.tenants AS t
                          WHERE t.tenant_id = w.tenant_id
                          LIMIT 1) AS s ON true
),
-- How many jobs each tenant may have locked for this claim: its free slots, and its
-- share of $3 by weight (an even split), so that a claim locks about the $3 rows it
-- takes, not $3 per tenant. A tenant held to its share sets `more`, and the worker
-- claims again at once: one more claim when tenants' backlogs differ, none when they
-- are all deep.
slots AS (
    SELECT t.tenant_id, t.pos, t.weight, t.free,
           least(t.free, $3::int, t.weight * ceil(1.0 * $3::int / t.walked)::int) AS share
      FROM slots_free AS t
),
-- Each tenant's best ready jobs of our kinds, at most its share, locked.
candidates AS (
    SELECT c.id, c.ctid, c.priority, t.pos, (c.rn - 1) / t.weight AS round,
           -- The share, not the free slots, stopped this tenant: it may have more.
           c.rn = t.share AND t.share < least(t.free, $3::int) AS share_full
      FROM slots AS t
     CROSS JOIN LATERAL (
            SELECT j.id, j.ctid, j.priority, row_number() OVER () AS rn
              FROM (SELECT j.id, j.ctid, j.priority
                      FROM pgwake.jobs AS j
                     WHERE j.tenant_id = t.tenant_id
                       AND j.status = 'queued'
                       AND j.run_at <= now()
                       AND j.kind = ANY ((SELECT k.kinds FROM kinds AS k)::text[])
                     ORDER BY j.priority DESC, j.run_at, j.id
                     LIMIT t.share
                       FOR UPDATE SKIP LOCKED) AS j
           ) AS c
     -- Nothing at all when the full claim must weigh this one (see needs_full below).
     WHERE t.share > 0 AND (SELECT p.ok FROM plain AS p)
       AND NOT EXISTS (SELECT 1 FROM slots_free AS f WHERE f.rate_limited)
),
-- Interleave tenants by weight: every tenant's first round before any tenant's second;
-- jobs below the default priority after the others.
chosen AS (
    SELECT id, ctid FROM candidates WHERE EXISTS (SELECT 1 FROM me)
     ORDER BY priority DESC, round, pos LIMIT $3::int
),
-- The locked rows go in as an array of ctids so the update reads them directly (a Tid
-- Scan, no index probe) whatever the planner guesses for LIMIT $3. A ctid is stable
-- while the row is locked.
claimed AS (
    UPDATE pgwake.jobs AS j
       SET status = 'running',
           claimed_by = $1,
           attempts = j.attempts + 1,
           started_at = now()
     WHERE j.ctid = ANY (ARRAY(SELECT ctid FROM chosen))
    RETURNING j.id, j.tenant_id, j.kind, j.payload::jsonb AS payload, j.priority,
              j.attempts, j.max_attempts,
              extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
              date_part('epoch', j.created_at) AS created_epoch,
              date_part('epoch', j.run_at) AS run_epoch,
              date_part('epoch', j.started_at) AS started_epoch
)
SELECT c.*, NULL::text AS walk_end, NULL::bigint AS walked, NULL::boolean AS more,
       NULL::float8 AS reopens_in, NULL::boolean AS needs_full
  FROM claimed AS c
UNION ALL
-- One last row (id NULL) says where the walk ended and how many tenants it visited, so
-- the next claim continues after it; a walk that visited $3 tenants may have stopped
-- short of more (for example past tenants whose jobs are all of other kinds). `more`
-- says a tenant was held to its share and may have more ready jobs right now.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT w.tenant_id FROM walk AS w ORDER BY w.lap DESC, w.step DESC LIMIT 1),
       (SELECT count(*) FROM walk),
       EXISTS (SELECT 1 FROM candidates WHERE share_full)
           -- A locked row whose newest version this statement cannot see (another
           -- transaction updated it after the claim began) is not updated by its ctid:
           -- it stays queued, and the next claim, right away, takes it.
           OR (SELECT count(*) FROM chosen) > (SELECT count(*) FROM claimed),
       NULL,
       NOT (SELECT p.ok FROM plain AS p) OR EXISTS (SELECT 1 FROM slots_free WHERE rate_limited)
 -- One job event per claimed job, all in one call; when nobody follows job events (or
 -- they are off) the arrays are not even built.
 WHERE NOT pgwake.events_wanted()
    OR (SELECT pgwake.job_events(array_agg(c.id), array_agg(c.tenant_id), array_agg(c.kind),
                                 array_agg('running'::text))
          FROM claimed AS c) >= 0;

-- name: job_claim_notified
-- Claims job $3, the one ready job a single-row insert named in its notification, for
-- worker $1 that was waiting for work: the wake-up of an idle worker, by primary key
-- instead of the tenant walk. The id comes from a NOTIFY payload, which anyone may
-- send, so the job is taken only when job_claim would take it first:
-- - it is ready (queued and due) and of a kind of $2 that no rate limit covers;
-- - its tenant has no row that changes the claim (paused, a fleet-wide cap, a rate
--   limit: those are the full claim's to weigh) and is not at its local cap in this
--   worker (not in $4);
-- - no other ready job of its tenant and of the kinds of $2 comes before it (higher
--   priority, or as high and older: one probe of jobs_ready_idx), and no ready job of
--   a higher priority above the default (0) waits in any tenant (one probe of
--   jobs_ready_priority_idx);
-- A job another claim has locked is waited for (a plain UPDATE, no row lock taken
-- before it: that lock cost a third of the statement) and is then found claimed: a claim
-- holds its rows for one statement, and claims lock with SKIP LOCKED, so they never
-- wait for this one.
-- A queued job that fails any of these is left as it is, and the worker runs job_claim,
-- which weighs everything. A job that is not queued (claimed by another worker woken
-- by the same notification, or an id that is not a job) claims nothing, and the worker
-- waits again.
--
-- $1 worker id (uuid)
-- $2 kinds this worker has handlers for (text[])
-- $3 the notified job id (bigint)
-- $4 tenants at their local cap in this worker (text[])
-- Returns the claimed job (if any), already marked running with attempts incremented,
-- in the columns of job_claim's jobs, then one row with id NULL saying whether the job
-- is queued (queued: false when it was neither claimed nor queued, so that there is
-- nothing for the full claim to weigh).
-- The worker must still be registered (as in job_claim).
WITH me AS (
    SELECT w.id FROM pgwake.workers AS w WHERE w.id = $1 FOR KEY SHARE
),
-- The row by its primary key alone: with the status in the same WHERE, a plan cached
-- while the queue was empty reads the partial ready index for it instead, which at
-- 100,000 queued jobs means reading them all. Without it only jobs_pkey can serve.
target AS MATERIALIZED (
    SELECT j.ctid FROM pgwake.jobs AS j WHERE j.id = $3::bigint
),
claimed AS (
    UPDATE pgwake.jobs AS j
       SET status = 'running',
           claimed_by = $1,
           attempts = j.attempts + 1,
           started_at = now()
     WHERE j.ctid = (SELECT t.ctid FROM target AS t)
       AND j.id = $3::bigint
       AND j.status = 'queued'
       AND j.run_at <= now()
       AND j.kind = ANY ($2::text[])
       AND j.tenant_id <> ALL ($4::text[])
       AND NOT EXISTS (SELECT 1 FROM pgwake.limits AS l WHERE l.kind = j.kind)
       AND NOT EXISTS (SELECT 1 FROM pgwake.tenants AS t
                        WHERE t.tenant_id = j.tenant_id
                          AND (t.paused OR t.max_concurrency IS NOT NULL
                               OR t.rate_limit IS NOT NULL))
       AND NOT EXISTS (SELECT 1 FROM pgwake.jobs AS o
                        WHERE o.tenant_id = j.tenant_id AND o.status = 'queued'
                          AND o.id <> j.id AND o.kind = ANY ($2::text[])
                          AND (o.priority > j.priority
                               OR (o.priority = j.priority
                                   AND (o.run_at, o.id) < (j.run_at, j.id))))
       AND NOT EXISTS (SELECT 1 FROM pgwake.jobs AS p
                        WHERE p.status = 'queued' AND p.priority <> 0
                          AND p.priority > greatest(j.priority, 0)
                          AND p.kind = ANY ($2::text[]))
       AND EXISTS (SELECT 1 FROM me)
    RETURNING j.id, j.tenant_id, j.kind, j.payload::jsonb AS payload, j.priority,
              j.attempts, j.max_attempts,
              extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
              date_part('epoch', j.created_at) AS created_epoch,
              date_part('epoch', j.run_at) AS run_epoch,
              date_part('epoch', j.started_at) AS started_epoch
)
SELECT c.*, NULL::boolean AS queued
  FROM claimed AS c
UNION ALL
-- One last row (id NULL): whether the job is queued (as this statement began). When it
-- was not claimed and is not queued (another worker took it, or no such job), the full
-- claim has nothing to weigh for it and the worker waits again.
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       coalesce((SELECT j.status = 'queued' FROM pgwake.jobs AS j WHERE j.id = $3::bigint),
                false)
 -- Its job event, as job_claim sends them.
 WHERE NOT pgwake.events_wanted()
    OR (SELECT pgwake.job_events(array_agg(c.id), array_agg(c.tenant_id),
                                 array_agg(c.kind), array_agg('running'::text))
          FROM claimed AS c) >= 0;

-- name: job_claim_fifo
-- The unfair claim, for comparison benchmarks only (claim_order = "fifo"): up to $3
-- ready jobs in global priority and age order, whatever their tenant. It skips paused
-- tenants but applies no tenant caps or weights, and it needs the index
-- jobs_fifo_idx (priority DESC, run_at, id) WHERE status = 'queued', which
-- `pgwake bench` creates in its own database; the schema does not have it.
-- $1 worker id, $2 kinds (text[]), $3 how many jobs at most.
WITH chosen AS (
    SELECT j.id
      FROM pgwake.jobs AS j
     WHERE j.status = 'queued'
       AND j.run_at <= now()
       AND j.kind = ANY ($2::text[])
       AND NOT EXISTS (SELECT 1 FROM pgwake.tenants AS p
                        WHERE p.tenant_id = j.tenant_id AND p.paused)
     ORDER BY j.priority DESC, j.run_at, j.id
     LIMIT $3::int
       FOR UPDATE SKIP LOCKED
)
UPDATE pgwake.jobs AS j
   SET status = 'running',
       claimed_by = $1,
       attempts = j.attempts + 1,
       started_at = now()
 WHERE j.id = ANY (ARRAY(SELECT id FROM chosen))
RETURNING j.id, j.tenant_id, j.kind, j.payload::jsonb AS payload, j.priority,
          j.attempts, j.max_attempts,
          extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
          date_part('epoch', j.created_at) AS created_epoch,
          date_part('epoch', j.run_at) AS run_epoch,
          date_part('epoch', j.started_at) AS started_epoch;

-- name: job_finish_many
-- Records the outcome of jobs this worker ran, in one statement. Fenced: a row changes
-- only while it is still running, held by this worker, in the same attempt; whatever a
-- worker that lost the job writes later changes nothing.
-- $1 worker id
-- $2 job ids (bigint[])
-- $3 the attempt each outcome belongs to (int[])
-- $4 new status: succeeded, failed, cancelled, queued or scheduled (text[]; a NULL
-- status is succeeded)
-- $5 attempts to give back: 1 for a snooze or a put-back, else 0 (int[]; NULL is 0)
-- $6 delay in seconds before the job runs again, NULL to keep run_at (float8[])
-- $7 result as JSON text (text[], read as jsonb), $8 error text (text[]; NULL keeps the
-- previous error)
-- $4 to $8 may each be NULL instead of an array of NULLs (unnest pads them): a batch
-- of successes sends ids, attempts and results only.
-- Returns one row: the ids that were changed (ids; NULL when none was) and how many
-- waiting jobs the statement settled (released or cancelled). When a finished job
-- belongs to a tenant with a fleet-wide cap, it also wakes every worker (one NOTIFY): a
-- slot of that tenant is free now, and whichever worker is idle may take it. The jobs
-- that wait for the finished ones are settled in the same statement; the worker that
-- wrote the outcomes claims at once when some were (a stream's pause between claims
-- does not end for a NOTIFY, so a chain's next link would wait for it).
WITH finished AS (
UPDATE pgwake.jobs AS j
   SET status = coalesce(u.status, 'succeeded'),
       attempts = greatest(j.attempts - coalesce(u.refund, 0), 0),
       run_at = CASE WHEN u.delay IS NULL THEN j.run_at
                     ELSE now() + make_interval(secs => u.delay) END,
       finished_at = CASE WHEN coalesce(u.status, 'succeeded')
                               IN ('succeeded', 'failed', 'cancelled') THEN now() END,
       claimed_by = NULL,
       result = u.result::jsonb,
       last_error = coalesce(u.error, j.last_error)
  FROM unnest($2::bigint[], $3::int[], $4::text[], $5::int[], $6::float8[], $7::text[],
              $8::text[]) AS u(id, attempt, status, refund, delay, result, error)
 WHERE j.id = ANY ($2::bigint[]) AND j.id = u.id
   -- j.id = ANY ($2) makes the rows primary-key probes: as a plain join on u.id the
   -- planner may hash the whole table when it is small.
   -- The fence. Wrapped in IS TRUE on purpose: as plain conditions they let the planner
   -- drive the update from jobs_running_tenant_idx (it often believes one row is running) and
   -- rescan the unnest() for every running job, O(running x batch). This way each
   -- outcome is one primary-key probe.
   AND (j.status = 'running' AND j.claimed_by = $1 AND j.attempts = u.attempt) IS TRUE
RETURNING j.id, j.tenant_id, j.kind, j.status
),
-- One job event per changed job, all in one call; when nobody follows job events (or
-- they are off) the arrays are not even built.
events AS (
    SELECT CASE WHEN pgwake.events_wanted()
                THEN (SELECT pgwake.job_events(array_agg(f.id), array_agg(f.tenant_id),
                                               array_agg(f.kind), array_agg(f.status))
                        FROM finished AS f)
                ELSE 0
           END AS sent
),
capped_slot_freed AS (
    -- One primary-key probe per tenant of the batch, not per job.
    SELECT pg_notify('pgwake_jobs', '')
     WHERE EXISTS (SELECT 1
                     FROM (SELECT DISTINCT f.tenant_id FROM finished AS f) AS d
                     JOIN pgwake.tenants AS t ON t.tenant_id = d.tenant_id
                    WHERE t.max_concurrency IS NOT NULL)
),
-- The jobs waiting for the finished ones are released (and the claimers woken) or
-- cancelled in this statement (pgwake.jobs_settle_dependents; one probe of
-- jobs_waiting_idx when no job waits). The aggregate reads the whole update first.
settled AS (
    SELECT pgwake.jobs_settle_dependents(
               array_agg(f.id) FILTER (WHERE f.status IN ('succeeded', 'failed', 'cancelled')))
               AS n
      FROM finished AS f
)
-- The conditions make sure the side-effect CTEs run (a SELECT CTE that is not
-- referenced is never evaluated). One row, whatever the batch: the client decodes one
-- array instead of a row per job.
SELECT array_agg(f.id) AS ids, max(s.n) AS settled
  FROM finished AS f, settled AS s
 WHERE (SELECT count(*) FROM capped_slot_freed) >= 0
   AND (SELECT sent FROM events) >= 0
   AND s.n >= 0;

-- name: job_put_back_unknown
-- Puts back jobs the database says this worker runs but the worker does not know of (a
-- claim that committed but whose reply was lost with the connection): queued again,
-- the attempt given back since no handler ran. Fenced on the worker.
-- $1 worker id, $2 job ids (bigint[]). Returns the ids put back.
WITH put_back AS (
    UPDATE pgwake.jobs
       SET status = 'queued',
           claimed_by = NULL,
           attempts = greatest(attempts - 1, 0)
     WHERE id = ANY ($2::bigint[]) AND claimed_by = $1 AND status = 'running'
    RETURNING id, tenant_id, kind
)
SELECT p.id FROM put_back AS p
 CROSS JOIN LATERAL pgwake.job_event(p.id, p.tenant_id, p.kind, 'queued') AS e;

-- name: job_put_back_held
-- When the worker ends, every job it still holds goes back to the queue, so nothing is
-- left running. After a clean stop (the drain timed out) the attempt is given back:
-- queued again. When the worker ends without a clean stop (it crashed, or was cancelled
-- from outside) the attempt counts, as recovery of a dead worker would do, so a job
-- that kills workers uses up its attempts: queued again, or failed when that was its
-- last attempt (and the jobs that wait for a failed one are settled).
-- $1 worker id, $2 the reason kept in last_error, $3 whether the attempt counts (bool).
-- Returns the ids put back and their new status.
WITH put_back AS (
    UPDATE pgwake.jobs AS j
       SET status = CASE WHEN $3::bool AND j.attempts >= j.max_attempts THEN 'failed'
                         ELSE 'queued' END,
           finished_at = CASE WHEN $3::bool AND j.attempts >= j.max_attempts THEN now() END,
           attempts = CASE WHEN $3::bool THEN j.attempts ELSE greatest(j.attempts - 1, 0) END,
           claimed_by = NULL,
           last_error = $2
     WHERE j.claimed_by = $1 AND j.status = 'running'
    RETURNING j.id, j.tenant_id, j.kind, j.status
),
settled AS (
    SELECT pgwake.jobs_settle_dependents(
               array_agg(p.id) FILTER (WHERE p.status = 'failed')) AS n
      FROM put_back AS p
)
SELECT p.id, p.status FROM put_back AS p
 CROSS JOIN LATERAL pgwake.job_event(p.id, p.tenant_id, p.kind, p.status) AS e
 WHERE (SELECT n FROM settled) >= 0;

-- name: job_set_progress
-- Stores a running job's progress, fenced on worker and attempt, and announces it on
-- pgwake_events (status running, "progress": true; the progress itself is read from the
-- row, under row-level security) while someone follows job events
-- (pgwake.events_wanted).
-- Returns whether the row was updated.
-- $1 job id, $2 worker id, $3 attempt, $4 progress (jsonb).
WITH updated AS (
    UPDATE pgwake.jobs AS j
       SET progress = $4::jsonb
     WHERE j.id = $1
       AND (j.status = 'running' AND j.claimed_by = $2 AND j.attempts = $3) IS TRUE
    RETURNING j.id, j.tenant_id, j.kind
),
announced AS (
    SELECT pg_notify('pgwake_events',
                     json_build_object('id', u.id, 'tenant', u.tenant_id,
                                       'status', 'running', 'progress', true)::text)
      FROM updated AS u
     WHERE pgwake.events_wanted()
)
SELECT EXISTS (SELECT 1 FROM updated) AND (SELECT count(*) FROM announced) >= 0;

-- name: job_list_cancel_requested
-- Running jobs of worker $1 whose cancellation was requested (pgwake.cancel_job marks
-- the row; only a role allowed to cancel the job can). The worker runs this when a
-- NOTIFY on pgwake_cancel arrives and stops only these: a notification is a hint.
-- $1 worker id.
SELECT j.id
  FROM pgwake.jobs AS j
 WHERE j.claimed_by = $1 AND j.status = 'running' AND j.cancel_requested_at IS NOT NULL;

-- name: tenant_get_dsn
-- A tenant's encrypted own-database DSN (NULL or no row: it has none).
-- $1 tenant id.
SELECT db_dsn_encrypted FROM pgwake.tenants WHERE tenant_id = $1;

-- name: worker_wake
-- Wakes every listening worker (after promoting jobs, for example).
-- No parameters.
SELECT pg_notify('pgwake_jobs', '');

-- name: listener_probe
-- Round trip on the LISTEN connection: a notification to the listener's own private
-- channel, which it must receive back (notifier.py).
-- $1 the channel, $2 a fresh token.
SELECT pg_notify($1, $2);

-- name: listener_start_waiting
-- The worker waits for new jobs from now on (pgwake.start_waiting, on the LISTEN
-- connection): inserts notify while it does. Returns the transactions that looked
-- before and are still open (the worker claims again once they have ended), or NULL
-- when the lock could not be had at this instant.
-- No parameters.
SELECT pgwake.start_waiting(0);

-- name: listener_list_open_transactions
-- Which of the transactions start_waiting returned are still open.
-- $1 virtual transaction ids (text[]).
SELECT pgwake.transactions_open($1::text[]);

-- name: listener_stop_waiting
-- The worker has a backlog and claims without being woken: inserts need not notify.
-- No parameters.
SELECT pgwake.stop_waiting(0);

-- name: job_reserve_ids
-- Reserves $1 ids for jobs a handler enqueues (ctx.enqueue), from the sequence an
-- insert takes its id from, in increasing order: the children are inserted later, with
-- their parent's outcome.
-- $1 how many.
SELECT array_agg(s.n ORDER BY s.n)
  FROM (SELECT nextval('pgwake.jobs_id_seq') AS n FROM generate_series(1, $1::int)) AS s;

-- name: job_insert_children
-- Inserts the jobs handlers enqueued (listener/children.py), in the transaction that
-- stores their parents' successful outcomes, in id order (a child's dependencies among
-- its siblings are inserted before it). Checked like any insert (constraints, the
-- dependencies trigger). Column defaults as in pgwake.jobs: 20 attempts, 15 minutes.
-- $1 ids (reserved with job_reserve_ids), $2 tenants, $3 kinds, $4 payloads (JSON
-- text), $5 priorities, $6 seconds from now until each may run (float8), $7 max
-- attempts (NULL: the default), $8 timeouts in seconds (NULL: the default),
-- $9 dependencies (a JSON array of ids as text, NULL: none), $10 run_anyway,
-- $11 metadata (JSON text, NULL: none). Returns the ids inserted.
INSERT INTO pgwake.jobs (id, tenant_id, kind, payload, priority, run_at, max_attempts,
                         timeout, depends_on, run_anyway, metadata)
SELECT c.id, c.tenant_id, c.kind, c.payload::jsonb, c.priority,
       now() + make_interval(secs => c.delay), coalesce(c.max_attempts, 20),
       coalesce(make_interval(secs => c.timeout), interval '15 minutes'),
       CASE WHEN c.deps IS NOT NULL
            THEN ARRAY(SELECT e::bigint FROM jsonb_array_elements_text(c.deps::jsonb) AS e) END,
       c.run_anyway, c.metadata::jsonb
  FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[], $6::float8[],
              $7::int[], $8::float8[], $9::text[], $10::bool[], $11::text[])
       AS c(id, tenant_id, kind, payload, priority, delay, max_attempts, timeout, deps,
            run_anyway, metadata)
 ORDER BY c.id
RETURNING id;

-- name: job_list_dependency_results
-- How each job job $1 depends on ended (ctx.dependency_results): id, status, result
-- and last error; a dependency removed by retention since is left out.
-- $1 job id.
SELECT d.id, d.status, d.result, d.last_error
  FROM pgwake.jobs AS j
 CROSS JOIN LATERAL (SELECT DISTINCT u.dep FROM unnest(j.depends_on) AS u(dep)) AS u
  JOIN pgwake.jobs AS d ON d.id = u.dep
 WHERE j.id = $1
 ORDER BY d.id;
