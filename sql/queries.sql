-- Every runtime query pgwake runs, as named blocks.
--
-- Format: a `-- name: noun_verb` line, then comment lines saying what the query does and
-- what its positional parameters $1..$n are, then the statement. listener/queries.py
-- loads this file once; tests PREPARE every block against the migrated schema.

-- name: schema_version
-- The highest applied migration. Fails with undefined_table (42P01) or
-- invalid_schema_name (3F000) when pgwake was never migrated here.
-- No parameters.
SELECT coalesce(max(version), 0) AS version FROM pgwake.schema_migrations;

-- name: migration_lock
-- Serialises `pgwake migrate` runs (session advisory lock, released by migration_unlock).
-- $1 the lock key.
SELECT pg_advisory_lock($1);

-- name: migration_unlock
-- Releases migration_lock.
-- $1 the lock key.
SELECT pg_advisory_unlock($1);

-- name: migration_create_schema
-- First step of every migrate run (idempotent DDL; not preparable).
-- No parameters.
CREATE SCHEMA IF NOT EXISTS pgwake;

-- name: migration_create_table
-- Second step of every migrate run: the table recording applied migrations.
-- No parameters.
CREATE TABLE IF NOT EXISTS pgwake.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
-- The migrations recorded as applied.
-- No parameters.
SELECT version, name, checksum FROM pgwake.schema_migrations ORDER BY version;

-- name: migration_record
-- Records one applied migration (inside the migration's own transaction).
-- $1 version, $2 name, $3 sha256 of the file.
INSERT INTO pgwake.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

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
-- as the lock's holder (session_pid), so that workers_lost counts only its lock.
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

-- name: worker_deregister
-- Removes a worker on clean exit (after its jobs were finished or put back).
-- $1 worker id.
DELETE FROM pgwake.workers WHERE id = $1;

-- name: job_claim
-- Claims up to $3 ready jobs for worker $1, fairly across tenants.
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
-- $1 worker id (uuid)
-- $2 kinds this worker has handlers for (text[])
-- $3 how many jobs to claim at most (int)
-- $4 per-tenant cap of claimed jobs inside this worker (int)
-- $5 tenants that already have jobs claimed in this worker (text[])
-- $6 how many each of those counts against $4, same order as $5 (int[]; below its
--    claimed jobs, even below zero, for a tenant the worker lets borrow idle slots)
-- $7 round-robin cursor: the tenant served last (text; '' to start at the beginning)
-- Returns the claimed jobs, already marked running with attempts incremented, then
-- one row with id NULL giving walk_end (the last tenant visited), walked (how many)
-- and more (a tenant was held to its share of $3, or a locked job was left queued: claim
-- again at once).
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
-- Tenants after the cursor, in order: each step finds the next tenant_id that has a
-- queued job of our kinds with one probe of jobs_ready_idx. The probe reads the queued
-- jobs of other kinds it passes (their kind is in the row, not in the index), so a
-- tenant whose jobs are all of kinds this worker does not handle costs the walk those
-- reads, never a step: however many such tenants there are, the walk reaches the next
-- tenant with work for us in the same claim.
after_cursor (tenant_id, step) AS (
    (SELECT j.tenant_id, 1
       FROM pgwake.jobs AS j
      WHERE j.status = 'queued' AND j.tenant_id > $7::text AND j.kind = ANY ($2::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > a.tenant_id
               AND j.kind = ANY ($2::text[])
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
      WHERE j.status = 'queued' AND j.tenant_id <= $7::text AND j.kind = ANY ($2::text[])
      ORDER BY j.tenant_id
      LIMIT 1)
    UNION ALL
    SELECT (SELECT j.tenant_id
              FROM pgwake.jobs AS j
             WHERE j.status = 'queued' AND j.tenant_id > b.tenant_id AND j.tenant_id <= $7::text
               AND j.kind = ANY ($2::text[])
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
-- Free slots per walked tenant: local, and fleet-wide for capped tenants. Computed only
-- for the tenants the walk kept (the advisory lock is never taken for others).
slots_free AS MATERIALIZED (
    SELECT w.tenant_id,
           row_number() OVER (ORDER BY w.lap, w.step) AS pos,
           count(*) OVER () AS walked,
           coalesce(s.weight, 1) AS weight,
           CASE WHEN s.max_concurrency IS NULL
                THEN $4::int - coalesce(r.running, 0)
                ELSE least($4::int - coalesce(r.running, 0),
                           pgwake.tenant_free_slots(w.tenant_id, s.max_concurrency))
           END AS free
      FROM walk AS w
      LEFT JOIN local_running AS r ON r.tenant_id = w.tenant_id
      -- LIMIT 1 keeps this a per-tenant primary-key probe (never a scan of all tenants).
      LEFT JOIN LATERAL (SELECT t.weight, t.max_concurrency
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
    SELECT c.id, c.ctid, t.pos, (c.rn - 1) / t.weight AS round,
           -- The share, not the free slots, stopped this tenant: it may have more.
           c.rn = t.share AND t.share < least(t.free, $3::int) AS share_full
      FROM slots AS t
     CROSS JOIN LATERAL (
            SELECT j.id, j.ctid, row_number() OVER () AS rn
              FROM (SELECT j.id, j.ctid
                      FROM pgwake.jobs AS j
                     WHERE j.tenant_id = t.tenant_id
                       AND j.status = 'queued'
                       AND j.run_at <= now()
                       AND j.kind = ANY ($2::text[])
                     ORDER BY j.priority DESC, j.run_at, j.id
                     LIMIT t.share
                       FOR UPDATE SKIP LOCKED) AS j
           ) AS c
     WHERE t.share > 0
),
-- Interleave tenants by weight: every tenant's first round before any tenant's second.
chosen AS (
    SELECT id, ctid FROM candidates WHERE EXISTS (SELECT 1 FROM me) ORDER BY round, pos LIMIT $3::int
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
    RETURNING j.id, j.tenant_id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts,
              extract(epoch FROM j.timeout)::float8 AS timeout_seconds, j.created_at, j.run_at,
              j.started_at
)
SELECT c.*, NULL::text AS walk_end, NULL::bigint AS walked, NULL::boolean AS more
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
 -- One job event per claimed job, all in one call; when nobody follows job events (or
 -- they are off) the arrays are not even built.
 WHERE NOT pgwake.events_wanted()
    OR (SELECT pgwake.job_events(array_agg(c.id), array_agg(c.tenant_id), array_agg(c.kind),
                                 array_agg('running'::text))
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
RETURNING j.id, j.tenant_id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts,
          extract(epoch FROM j.timeout)::float8 AS timeout_seconds, j.created_at, j.run_at,
          j.started_at;

-- name: bench_create_fifo_index
-- The index job_claim_fifo needs; created only in benchmark databases.
-- No parameters.
CREATE INDEX IF NOT EXISTS jobs_fifo_idx ON pgwake.jobs (priority DESC, run_at, id)
    WHERE status = 'queued';

-- name: job_finish_many
-- Records the outcome of jobs this worker ran, in one statement. Fenced: a row changes
-- only while it is still running, held by this worker, in the same attempt; whatever a
-- worker that lost the job writes later changes nothing.
-- $1 worker id
-- $2 job ids (bigint[])
-- $3 the attempt each outcome belongs to (int[])
-- $4 new status: succeeded, failed, cancelled, queued or scheduled (text[])
-- $5 attempts to give back: 1 for a snooze or a put-back, else 0 (int[])
-- $6 delay in seconds before the job runs again, NULL to keep run_at (float8[])
-- $7 result (jsonb[]), $8 error text (text[]; NULL keeps the previous error)
-- $6, $7 and $8 may each be NULL instead of an array of NULLs (unnest pads them).
-- Returns the ids that were changed. When a finished job belongs to a tenant with a
-- fleet-wide cap, it also wakes every worker (one NOTIFY): a slot of that tenant is
-- free now, and whichever worker is idle may take it.
WITH finished AS (
UPDATE pgwake.jobs AS j
   SET status = u.status,
       attempts = greatest(j.attempts - u.refund, 0),
       run_at = CASE WHEN u.delay IS NULL THEN j.run_at
                     ELSE now() + make_interval(secs => u.delay) END,
       finished_at = CASE WHEN u.status IN ('succeeded', 'failed', 'cancelled') THEN now() END,
       claimed_by = NULL,
       result = u.result,
       last_error = coalesce(u.error, j.last_error)
  FROM unnest($2::bigint[], $3::int[], $4::text[], $5::int[], $6::float8[], $7::jsonb[],
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
)
-- The conditions make sure both side-effect CTEs run (a SELECT CTE that is not
-- referenced is never evaluated).
SELECT f.id FROM finished AS f
 WHERE (SELECT count(*) FROM capped_slot_freed) >= 0
   AND (SELECT sent FROM events) >= 0;

-- name: job_put_back_held
-- On shutdown, after the drain: every job this worker still holds goes back to the
-- queue with its attempt given back, so nothing is lost and nothing is left running.
-- $1 worker id, $2 the reason kept in last_error.
-- Returns the ids put back.
WITH put_back AS (
    UPDATE pgwake.jobs
       SET status = 'queued',
           claimed_by = NULL,
           attempts = greatest(attempts - 1, 0),
           last_error = $2
     WHERE claimed_by = $1 AND status = 'running'
    RETURNING id, tenant_id, kind
)
SELECT p.id FROM put_back AS p CROSS JOIN LATERAL pgwake.job_event(p.id, p.tenant_id, p.kind, 'queued') AS e;

-- name: job_put_back_held_counted
-- When the worker ends without a clean stop (it crashed, or was cancelled from outside):
-- every job it still holds goes back with its attempt counted, as recovery of a dead
-- worker would do, so a job that kills workers uses up its attempts. Queued again, or
-- failed when that was its last attempt.
-- $1 worker id, $2 the reason kept in last_error.
-- Returns the ids put back and their new status.
WITH put_back AS (
    UPDATE pgwake.jobs AS j
       SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,
           finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
           claimed_by = NULL,
           last_error = $2
     WHERE j.claimed_by = $1 AND j.status = 'running'
    RETURNING j.id, j.tenant_id, j.kind, j.status
)
SELECT p.id, p.status FROM put_back AS p
 CROSS JOIN LATERAL pgwake.job_event(p.id, p.tenant_id, p.kind, p.status) AS e;

-- name: job_promote_due
-- Moves up to $1 scheduled jobs whose run_at has come to queued, on one worker at a
-- time: it locks the 'promotion' row of pgwake.leaders for its transaction first, but
-- only when a job is due (every NOTIFY wakes the promoters, and a row lock makes the
-- transaction a write that waits for the disk at commit); leader is false (and
-- nothing is promoted) when another worker holds it. Returns how many were promoted.
-- $1 batch size.
WITH leader AS (
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pgwake.jobs AS j
                              WHERE j.status = 'scheduled' AND j.run_at <= now())
                THEN EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                             WHERE l.name = 'promotion'
                                               FOR NO KEY UPDATE SKIP LOCKED) AS held)
                ELSE true  -- nothing due: nothing to lead
           END AS ok
),
due AS (
    SELECT id
      FROM pgwake.jobs
     WHERE (SELECT ok FROM leader) AND status = 'scheduled' AND run_at <= now()
     ORDER BY run_at
     LIMIT $1::int
       FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE pgwake.jobs AS j SET status = 'queued' FROM due WHERE j.id = due.id
    RETURNING j.id, j.tenant_id, j.kind
)
SELECT (SELECT ok FROM leader) AS leader,
       (SELECT count(*)::int
          FROM promoted AS p
         CROSS JOIN LATERAL pgwake.job_event(p.id, p.tenant_id, p.kind, 'queued') AS e)
           AS promoted;

-- name: job_next_due
-- Seconds until the earliest scheduled job is due (0 when one is already due), or NULL
-- when none is scheduled.
-- No parameters.
SELECT CASE WHEN min(run_at) IS NOT NULL
            THEN greatest(extract(epoch FROM (min(run_at) - now())), 0)::float8
       END AS seconds
  FROM pgwake.jobs
 WHERE status = 'scheduled';

-- name: maintenance_leader
-- Takes the maintenance lock (the 'maintenance' row of pgwake.leaders) for the rest of
-- the calling transaction: true for at most one worker at a time, which does this round
-- of recovery. Nothing waits for a leader that died or hangs; the next round simply
-- goes to another worker. A row lock needs UPDATE on pgwake.leaders: no role without
-- pgwake's privileges can hold recovery back (an advisory lock anyone could take). The
-- round's commit does not wait for the disk (synchronous_commit off for it): a round
-- lost in a crash is done again by the next one, and most rounds write nothing but
-- the lock.
-- No parameters.
SELECT set_config('synchronous_commit', 'off', true) IS NOT NULL
       AND EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                   WHERE l.name = 'maintenance'
                                     FOR NO KEY UPDATE SKIP LOCKED) AS held);

-- name: workers_lost
-- Workers that are gone or hung, locked for recovery (in the leader's transaction):
-- - gone: its liveness lock is no longer held by its heartbeat session (session_pid;
--   the same key held by any other session does not count) and its last heartbeat is
--   older than $1 seconds (a few heartbeat intervals, so a live worker whose session
--   was cut has beaten again from a new one). Judged only once the server has been up
--   for $2 seconds, so that after a server restart live workers have had time to
--   reconnect and take their locks again.
-- - hung: no heartbeat for $2 seconds, lock or not (an event loop blocked, a stopped
--   process, a partitioned host).
-- FOR UPDATE waits for a claim of that worker in flight (which holds KEY SHARE), so the
-- recovery that follows sees every job the worker claimed.
-- $1 grace in seconds (one and a half heartbeat intervals), $2 heartbeat timeout in seconds.
SELECT w.id, w.hostname, w.pid,
       CASE WHEN w.heartbeat_at < now() - make_interval(secs => $2) THEN 'hung' ELSE 'gone' END
           AS why,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS silent_seconds
  FROM pgwake.workers AS w
 WHERE w.heartbeat_at < now() - make_interval(secs => $2)
    OR (w.heartbeat_at < now() - make_interval(secs => $1)
        AND now() - pg_postmaster_start_time() > make_interval(secs => $2)
        AND NOT EXISTS (SELECT 1
                          FROM pg_locks AS l
                         WHERE l.locktype = 'advisory'
                           AND l.database = (SELECT d.oid FROM pg_database AS d
                                              WHERE d.datname = current_database())
                           AND l.classid = 1885828962::oid
                           AND l.objid = w.lock_key::oid
                           AND l.objsubid = 2
                           AND l.pid = w.session_pid
                           AND l.granted))
   FOR UPDATE OF w;

-- name: jobs_recover
-- Puts back up to $3 running jobs of lost workers: queued again, or failed when the
-- lost attempt was their last, or cancelled when their cancellation was requested
-- (pgwake.cancel_job; the request is never lost with the worker). The attempt counts (it was counted when claimed) and the
-- reason goes to last_error. Also takes running jobs whose claimant is not registered
-- at all. Returns each job, its new status, and the lost worker it was taken from
-- (NULL when its claimant is not registered).
-- $1 lost worker ids (uuid[]), $2 the reason for each (text[], same order), $3 limit.
WITH lost AS (
    SELECT l.worker_id, l.reason FROM unnest($1::uuid[], $2::text[]) AS l(worker_id, reason)
),
victims AS (
    SELECT j.id, l.worker_id AS lost_worker,
           coalesce(l.reason, 'recovered: claimed by worker ' || j.claimed_by
                              || ', which is not registered') AS reason
      FROM pgwake.jobs AS j
      LEFT JOIN lost AS l ON l.worker_id = j.claimed_by
     WHERE j.status = 'running'
       AND (l.worker_id IS NOT NULL
            OR NOT EXISTS (SELECT 1 FROM pgwake.workers AS w WHERE w.id = j.claimed_by))
     LIMIT $3::int
       FOR UPDATE OF j SKIP LOCKED
),
recovered AS (
    UPDATE pgwake.jobs AS j
       SET status = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                         WHEN j.attempts >= j.max_attempts THEN 'failed'
                         ELSE 'queued' END,
           finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                                   OR j.attempts >= j.max_attempts THEN now() END,
           claimed_by = NULL,
           last_error = CASE WHEN j.cancel_requested_at IS NOT NULL
                             THEN 'cancelled: requested while running; ' || v.reason
                             ELSE v.reason END
      FROM victims AS v
     WHERE j.id = v.id
    RETURNING j.id, j.tenant_id, j.kind, j.status, v.lost_worker
)
SELECT r.id, r.status, r.lost_worker
  FROM recovered AS r
 CROSS JOIN LATERAL pgwake.job_event(r.id, r.tenant_id, r.kind, r.status) AS e;

-- name: workers_remove_lost
-- Deletes lost workers that hold no running job any more. Returns their ids.
-- $1 lost worker ids (uuid[]).
DELETE FROM pgwake.workers AS w
 WHERE w.id = ANY ($1::uuid[])
   AND NOT EXISTS (SELECT 1 FROM pgwake.jobs AS j
                    WHERE j.claimed_by = w.id AND j.status = 'running')
RETURNING w.id;

-- name: jobs_list
-- Jobs, newest first, filtered; NULL filters match everything. Paged by id: $6 gives
-- the last id of the previous page (NULL for the first page).
-- $1 tenant, $2 kind, $3 status, $4 created at least this many seconds ago,
-- $5 page size, $6 list only ids below this.
SELECT j.id, j.tenant_id, j.kind, j.status, j.priority, j.attempts, j.max_attempts,
       j.created_at, j.run_at, j.started_at, j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error
  FROM pgwake.jobs AS j
 WHERE ($1::text IS NULL OR j.tenant_id = $1)
   AND ($2::text IS NULL OR j.kind = $2)
   AND ($3::text IS NULL OR j.status = $3)
   AND ($4::float8 IS NULL OR j.created_at < now() - make_interval(secs => $4::float8))
   AND ($6::bigint IS NULL OR j.id < $6)
 ORDER BY j.id DESC
 LIMIT $5::int;

-- name: job_show
-- One job, every column.
-- $1 job id.
SELECT j.id, j.tenant_id, j.kind, j.status, j.payload, j.priority, j.attempts,
       j.max_attempts, j.unique_key, extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
       j.claimed_by, j.created_at, j.run_at, j.started_at, j.finished_at,
       j.cancel_requested_at, j.progress, j.result, j.last_error
  FROM pgwake.jobs AS j
 WHERE j.id = $1;

-- name: jobs_retry
-- Runs finished jobs again: failed or cancelled jobs (by id, or all failed ones of a
-- kind and tenant) go back to queued with their attempts reset, due now. last_error is
-- kept. A chosen job whose unique key an active job (scheduled, queued, running) holds
-- stays as it is, and so does each but the newest of chosen jobs sharing one key (only
-- one of them may be active), so one such job does not stop the others being retried.
-- Returns one row per chosen job: its id, whether it was retried, and else the job that
-- holds its key (held_by) and whether that one is being retried instead (instead).
-- $1 job ids (bigint[], NULL: select by status), $2 kind or NULL, $3 tenant or NULL.
WITH chosen AS (
    SELECT j.id, j.tenant_id, j.kind, j.unique_key
      FROM pgwake.jobs AS j
     WHERE j.status IN ('failed', 'cancelled')
       AND CASE WHEN $1::bigint[] IS NOT NULL THEN j.id = ANY ($1::bigint[])
                ELSE j.status = 'failed'
                     AND ($2::text IS NULL OR j.kind = $2)
                     AND ($3::text IS NULL OR j.tenant_id = $3) END
),
held AS (
    SELECT c.id, a.id AS held_by, false AS instead
      FROM chosen AS c
      JOIN pgwake.jobs AS a
        ON a.tenant_id = c.tenant_id AND a.kind = c.kind AND a.unique_key = c.unique_key
       AND a.status IN ('scheduled', 'queued', 'running')
),
newest AS (
    SELECT c.id, first_value(c.id) OVER (PARTITION BY c.tenant_id, c.kind, c.unique_key
                                         ORDER BY c.id DESC) AS newest
      FROM chosen AS c
     WHERE c.unique_key IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM held AS h WHERE h.id = c.id)
),
blocked AS (
    SELECT h.id, h.held_by, h.instead FROM held AS h
    UNION ALL
    SELECT n.id, n.newest, true FROM newest AS n WHERE n.id <> n.newest
),
retried AS (
    UPDATE pgwake.jobs AS j
       SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
           result = NULL, progress = NULL, cancel_requested_at = NULL
      FROM chosen AS c
     WHERE j.id = c.id
       AND j.status IN ('failed', 'cancelled')
       AND NOT EXISTS (SELECT 1 FROM blocked AS b WHERE b.id = c.id)
    RETURNING j.id, j.tenant_id, j.kind
)
SELECT r.id, true AS retried, NULL::bigint AS held_by, NULL::boolean AS instead
  FROM retried AS r
 CROSS JOIN LATERAL pgwake.job_event(r.id, r.tenant_id, r.kind, 'queued') AS e
 UNION ALL
SELECT b.id, false, b.held_by, b.instead FROM blocked AS b;

-- name: jobs_purge
-- Deletes finished jobs (never queued, scheduled or running ones) with status $1 (NULL:
-- every finished status) that finished more than $2 seconds ago (NULL: any time).
-- Returns how many.
WITH purged AS (
    DELETE FROM pgwake.jobs AS j
     WHERE j.status IN ('succeeded', 'failed', 'cancelled')
       AND ($1::text IS NULL OR j.status = $1)
       AND ($2::float8 IS NULL OR j.finished_at < now() - make_interval(secs => $2::float8))
    RETURNING 1
)
SELECT count(*)::int FROM purged;

-- name: job_progress
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

-- name: jobs_cancel_requested
-- Running jobs of worker $1 whose cancellation was requested (pgwake.cancel_job marks
-- the row; only a role allowed to cancel the job can). The worker runs this when a
-- NOTIFY on pgwake_cancel arrives and stops only these: a notification is a hint.
-- $1 worker id.
SELECT j.id
  FROM pgwake.jobs AS j
 WHERE j.claimed_by = $1 AND j.status = 'running' AND j.cancel_requested_at IS NOT NULL;

-- name: job_cancel
-- Cancels one job through pgwake.cancel_job and says what happened: cancelled (it was
-- queued or scheduled), requested (it is running; its worker will stop it), finished
-- (it had already ended) or not found.
-- $1 job id.
WITH done AS (SELECT pgwake.cancel_job($1::bigint) AS ok)
SELECT CASE WHEN d.ok AND j.status = 'running' THEN 'requested'
            WHEN d.ok THEN 'cancelled'
            WHEN j.id IS NULL THEN 'not found'
            ELSE 'finished'
       END AS result
  FROM done AS d
  LEFT JOIN pgwake.jobs AS j ON j.id = $1::bigint;

-- name: jobs_prune
-- One batch of retention: deletes up to $3 jobs with status $1 (succeeded, failed or
-- cancelled only) that finished more than $2 seconds ago, oldest first. Takes the
-- retention lock (the 'retention' row of pgwake.leaders) for its transaction first; leader is false (and nothing is deleted)
-- when another worker holds it.
-- $1 status, $2 retention in seconds, $3 batch size.
WITH leader AS (
    SELECT EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                   WHERE l.name = 'retention'
                                     FOR NO KEY UPDATE SKIP LOCKED) AS held) AS ok
),
doomed AS (
    SELECT j.id
      FROM pgwake.jobs AS j
     WHERE (SELECT ok FROM leader)
       AND j.status = $1::text
       AND j.status IN ('succeeded', 'failed', 'cancelled')
       AND j.finished_at < now() - make_interval(secs => $2::float8)
     ORDER BY j.finished_at
     LIMIT $3::int
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM pgwake.jobs AS j WHERE j.id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT ok FROM leader) AS leader, (SELECT count(*)::int FROM deleted) AS deleted;

-- name: schedules_leader
-- Takes the schedules lock (the 'schedules' row of pgwake.leaders) for the rest of the
-- calling transaction: true for at most one worker at a time, which enqueues this
-- round's due slots. The round's commit does not wait for the disk (synchronous_commit
-- off for it): a round lost in a crash, slots and next_run_at together, is done again
-- by the next one, and most rounds write nothing but the lock.
-- No parameters.
SELECT set_config('synchronous_commit', 'off', true) IS NOT NULL
       AND EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                   WHERE l.name = 'schedules'
                                     FOR NO KEY UPDATE SKIP LOCKED) AS held);

-- name: schedules_due
-- Enabled schedules whose next slot has come (or was never computed), locked for the
-- rest of the leader's transaction, and the database's clock.
-- No parameters.
SELECT s.name, s.cron, s.timezone, s.missed, s.next_run_at, now() AS db_now
  FROM pgwake.schedules AS s
 WHERE s.enabled AND (s.next_run_at IS NULL OR s.next_run_at <= now())
 ORDER BY s.next_run_at NULLS FIRST
   FOR UPDATE SKIP LOCKED;

-- name: schedule_enqueue
-- Enqueues one slot of schedule $1: one job for its tenant, or one for every tenant in
-- pgwake.tenants when it has none. The job's columns are copied from the schedule's row
-- here, never through the client, so a payload is enqueued exactly as stored (whether
-- or not Python could decode it). unique_key names the schedule and the slot.
-- $1 schedule name, $2 unique key.
-- Returns how many jobs were enqueued.
WITH s AS (
    SELECT tenant_id, kind, payload, priority, max_attempts
      FROM pgwake.schedules
     WHERE name = $1::text
),
targets AS (
    SELECT s.tenant_id FROM s WHERE s.tenant_id IS NOT NULL
    UNION ALL
    SELECT t.tenant_id FROM pgwake.tenants AS t, s WHERE s.tenant_id IS NULL
),
inserted AS (
    INSERT INTO pgwake.jobs (tenant_id, kind, payload, priority, max_attempts, unique_key)
    SELECT t.tenant_id, s.kind, s.payload, s.priority, s.max_attempts, $2::text
      FROM targets AS t CROSS JOIN s
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*)::int FROM inserted;

-- name: schedule_advance
-- Moves a schedule to its next slot after enqueuing the due ones.
-- $1 name, $2 next slot, $3 the last slot enqueued (NULL: none this time).
UPDATE pgwake.schedules
   SET next_run_at = $2, last_slot = coalesce($3, last_slot)
 WHERE name = $1;

-- name: schedule_disable
-- Disables a schedule the leader cannot evaluate or whose jobs cannot be enqueued, with
-- the reason.
-- $1 name, $2 reason.
UPDATE pgwake.schedules
   SET enabled = false, last_error = $2, updated_at = now()
 WHERE name = $1;

-- name: schedule_add
-- Adds a schedule (next_run_at is computed by the next round of the leader).
-- $1 name, $2 cron, $3 time zone, $4 kind, $5 payload, $6 tenant or NULL, $7 priority,
-- $8 max attempts, $9 missed-slot policy.
INSERT INTO pgwake.schedules (name, cron, timezone, kind, payload, tenant_id, priority,
                              max_attempts, missed)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)
RETURNING name;

-- name: schedules_list
-- Every schedule, by name.
-- No parameters.
SELECT name, cron, timezone, kind, payload, tenant_id, priority, max_attempts, missed,
       enabled, next_run_at, last_slot, last_error, created_at
  FROM pgwake.schedules
 ORDER BY name;

-- name: schedule_remove
-- Removes a schedule; jobs it enqueued stay. Returns the name, or nothing.
-- $1 name.
DELETE FROM pgwake.schedules WHERE name = $1 RETURNING name;

-- name: workers_wake
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

-- name: listener_transactions_open
-- Which of the transactions start_waiting returned are still open.
-- $1 virtual transaction ids (text[]).
SELECT pgwake.transactions_open($1::text[]);

-- name: listener_stop_waiting
-- The worker has a backlog and claims without being woken: inserts need not notify.
-- No parameters.
SELECT pgwake.stop_waiting(0);

-- name: job_enqueue
-- Enqueues one job (the CLI's `pgwake enqueue`; applications use a plain INSERT).
-- $1 tenant, $2 kind, $3 payload (jsonb), $4 priority, $5 seconds from now until it may
-- run (float8), $6 max attempts (NULL for the default), $7 unique key, $8 timeout in
-- seconds (NULL for the default).
-- Returns the new job's id and status, or nothing when the unique key is taken.
INSERT INTO pgwake.jobs (tenant_id, kind, payload, priority, run_at, max_attempts, unique_key,
                         timeout, status)
VALUES ($1, $2, $3::jsonb, $4, now() + make_interval(secs => $5::float8),
        coalesce($6::int, 20), $7,
        coalesce(make_interval(secs => $8::float8), interval '15 minutes'),
        CASE WHEN $5::float8 > 0 THEN 'scheduled' ELSE 'queued' END)
ON CONFLICT (tenant_id, kind, unique_key)
   WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
   DO NOTHING
RETURNING id, status;

-- name: tenant_list
-- Every tenant with settings, with its queued and running job counts; of its own
-- database only whether it has one and the id of the key that encrypted the DSN.
-- No parameters.
SELECT t.tenant_id, t.max_concurrency, t.weight, t.paused,
       t.db_dsn_encrypted IS NOT NULL AS has_database,
       split_part(t.db_dsn_encrypted, ':', 3) AS database_key, t.created_at, t.updated_at,
       (SELECT count(*) FROM pgwake.jobs AS j
         WHERE j.tenant_id = t.tenant_id AND j.status = 'queued') AS queued,
       (SELECT count(*) FROM pgwake.jobs AS j
         WHERE j.tenant_id = t.tenant_id AND j.status = 'running') AS running
  FROM pgwake.tenants AS t
 ORDER BY t.tenant_id;

-- name: tenant_get
-- One tenant's settings (the DSN only as ciphertext).
-- $1 tenant id.
SELECT tenant_id, max_concurrency, weight, paused, db_dsn_encrypted, created_at, updated_at
  FROM pgwake.tenants
 WHERE tenant_id = $1;

-- name: tenant_add
-- Adds a tenant; returns nothing when it exists already.
-- $1 tenant id, $2 max concurrency (NULL: no fleet-wide cap), $3 weight, $4 paused,
-- $5 encrypted DSN (NULL: no database of its own).
INSERT INTO pgwake.tenants (tenant_id, max_concurrency, weight, paused, db_dsn_encrypted)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id) DO NOTHING
RETURNING tenant_id;

-- name: tenant_update
-- Changes a tenant's settings; returns nothing when the tenant does not exist.
-- $1 tenant id; $2 whether to set max_concurrency, $3 its new value (NULL: no cap);
-- $4 new weight (NULL: keep); $5 whether to set the DSN, $6 the new ciphertext (NULL:
-- no database of its own).
UPDATE pgwake.tenants
   SET max_concurrency = CASE WHEN $2::bool THEN $3::int ELSE max_concurrency END,
       weight = coalesce($4::int, weight),
       db_dsn_encrypted = CASE WHEN $5::bool THEN $6::text ELSE db_dsn_encrypted END,
       updated_at = now()
 WHERE tenant_id = $1
RETURNING tenant_id;

-- name: tenant_set_paused
-- Pauses or resumes a tenant (creating its row with defaults when it has none). A
-- paused tenant is skipped by the very next claim of every worker.
-- $1 tenant id, $2 paused.
INSERT INTO pgwake.tenants (tenant_id, paused) VALUES ($1, $2)
ON CONFLICT (tenant_id) DO UPDATE SET paused = excluded.paused, updated_at = now()
RETURNING tenant_id;

-- name: tenant_remove
-- Removes a tenant's settings (its jobs stay, and run with the defaults).
-- $1 tenant id.
DELETE FROM pgwake.tenants WHERE tenant_id = $1 RETURNING tenant_id;

-- name: tenant_dsns
-- Every encrypted tenant DSN, for key rotation.
-- No parameters.
SELECT tenant_id, db_dsn_encrypted FROM pgwake.tenants
 WHERE db_dsn_encrypted IS NOT NULL
 ORDER BY tenant_id;

-- name: tenant_dsn_replace
-- Replaces an encrypted DSN only if it is still the one read (compare-and-set), so a
-- rotation never overwrites a DSN changed meanwhile.
-- $1 tenant id, $2 the ciphertext read, $3 the new ciphertext.
UPDATE pgwake.tenants SET db_dsn_encrypted = $3, updated_at = now()
 WHERE tenant_id = $1 AND db_dsn_encrypted = $2
RETURNING tenant_id;

-- name: bench_workers_registered
-- How many workers are registered (benchmarks wait for theirs).
-- No parameters.
SELECT count(*) FROM pgwake.workers;

-- name: bench_enqueue_many
-- Enqueues $3 jobs of kind $2 for tenant $1 with payload $4, in one statement.
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT $1, $2, $4::jsonb FROM generate_series(1, $3::int);

-- name: bench_analyze
-- Fresh planner statistics for the queue tables after a bulk load.
-- No parameters.
ANALYZE pgwake.jobs, pgwake.tenants;

-- name: bench_enqueue_spread
-- Enqueues $2 no-op jobs spread round-robin over $3 tenants (bench-t0, bench-t1, ...),
-- numbered from $1 so that successive chunks continue the spread.
INSERT INTO pgwake.jobs (tenant_id, kind)
SELECT 'bench-t' || (g % $3::int), 'noop'
  FROM generate_series($1::int, $1::int + $2::int - 1) AS g;

-- name: bench_server_uptime
-- Seconds since the server started (the recovery benchmark waits out the grace after a
-- server start, during which lost workers are judged by the heartbeat timeout only).
SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8;

-- name: bench_jobs_held_by_pid
-- Running jobs held by the worker process with pid $1 (recovery benchmark).
SELECT count(*)::int
  FROM pgwake.jobs AS j
  JOIN pgwake.workers AS w ON w.id = j.claimed_by
 WHERE j.status = 'running' AND w.pid = $1;

-- name: bench_insert_finished
-- Inserts $2 succeeded jobs that finished two days ago, spread over $3 tenants and
-- numbered from $1 (retention benchmark).
INSERT INTO pgwake.jobs (tenant_id, kind, status, attempts, created_at, finished_at)
SELECT 'bench-t' || (g % $3::int), 'noop', 'succeeded', 1,
       now() - interval '2 days', now() - interval '2 days'
  FROM generate_series($1::int, $1::int + $2::int - 1) AS g;

-- name: bench_finished
-- How many jobs have finished (succeeded or failed).
-- No parameters.
SELECT count(*) FROM pgwake.jobs WHERE status IN ('succeeded', 'failed');

-- name: bench_active
-- Whether any job is still scheduled, queued or running: one probe of each partial
-- index, cheap enough to poll while a drain is timed.
-- No parameters.
SELECT EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'queued')
    OR EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'running')
    OR EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'scheduled');

-- name: bench_drain_seconds
-- Seconds from the first claim to the last finish (database clock).
-- No parameters.
SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM pgwake.jobs;

-- name: bench_ceiling_claim
-- The raw-SQL ceiling, first step (benchmarks only; no pgwake bookkeeping): takes up
-- to $1 queued jobs with FOR UPDATE SKIP LOCKED, returning what a worker would need
-- to run them. bench_ceiling_delete deletes them in the same transaction.
-- $1 how many at most.
SELECT j.id, j.tenant_id, j.kind, j.payload
  FROM pgwake.jobs AS j
 WHERE j.status = 'queued'
 LIMIT $1::int
   FOR UPDATE SKIP LOCKED;

-- name: bench_ceiling_delete
-- The raw-SQL ceiling, second step: deletes the jobs bench_ceiling_claim took.
-- $1 job ids (bigint[]).
DELETE FROM pgwake.jobs WHERE id = ANY ($1::bigint[]);

-- name: bench_enqueue_one
-- Enqueues one no-op job for tenant $1, as an application's plain INSERT does.
INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ($1, 'noop');

-- name: bench_enqueue_arrays
-- Enqueues one job per element of $1 (tenants) and $3 (payloads, jsonb[]), of kind $2,
-- in one statement, as an application enqueuing a batch does.
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT u.tenant_id, $2, u.payload FROM unnest($1::text[], $3::jsonb[]) AS u(tenant_id, payload);

-- name: bench_disable_insert_trigger
-- Disables the NOTIFY trigger on insert (only ever in a benchmark's own database, to
-- measure what the trigger costs). Not preparable (DDL).
-- No parameters.
ALTER TABLE pgwake.jobs DISABLE TRIGGER jobs_notify_after_insert;

-- name: bench_enqueue_started
-- Enqueues one job of kind bench.started (the latency and fairness benchmarks) for
-- tenant $1 with payload $2; returns its id.
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
VALUES ($1, 'bench.started', $2::jsonb) RETURNING id;

-- name: bench_started_times
-- Per finished job of kind bench.started: its id and the wall-clock time its handler
-- started (the handler's result).
-- No parameters.
SELECT id, (result ->> 'started')::float8 AS started
  FROM pgwake.jobs
 WHERE kind = 'bench.started' AND status = 'succeeded';

-- name: bench_job_times
-- Per job: id, tenant, insert time and finish time (database clock).
-- No parameters.
SELECT id, tenant_id, created_at, finished_at FROM pgwake.jobs;

-- name: bench_drain_seconds_of
-- Seconds from the first claim to the last finish of the jobs of tenants whose id
-- starts with $1 (database clock).
SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8
  FROM pgwake.jobs
 WHERE starts_with(tenant_id, $1::text);

-- name: bench_longest_claim_gap
-- The longest time, in milliseconds, between two successive claims of the jobs of
-- tenants whose id starts with $1: a claim stamps its jobs with its transaction's start
-- (started_at), so while a backlog drains this bounds the slowest claim from above.
SELECT coalesce(max(g.gap), 0)::float8
  FROM (SELECT extract(epoch FROM d.s - lag(d.s) OVER (ORDER BY d.s)) * 1000 AS gap
          FROM (SELECT DISTINCT started_at AS s
                  FROM pgwake.jobs
                 WHERE starts_with(tenant_id, $1::text)) AS d) AS g;

-- name: bench_enqueue_foreign
-- Enqueues one job of kind $2 for each of $1 tenants (foreign-0, foreign-1, ...), in
-- one statement: tenants whose only jobs are of a kind the benchmark's worker does not
-- handle.
INSERT INTO pgwake.jobs (tenant_id, kind)
SELECT 'foreign-' || g, $2::text FROM generate_series(0, $1::int - 1) AS g;

-- name: tenant_dsn_get
-- A tenant's encrypted own-database DSN (NULL or no row: it has none).
-- $1 tenant id.
SELECT db_dsn_encrypted FROM pgwake.tenants WHERE tenant_id = $1;

-- name: metrics_leader
-- Tries to take the metrics lock for the rest of the session: true for at most one
-- worker of the fleet, which then keeps this connection and alone samples the
-- database-derived gauges. The lock is released when the connection goes back to the
-- pool (its reset unlocks every advisory lock) or dies with the worker.
-- No parameters.
SELECT pg_try_advisory_lock(1885828963, 1);

-- name: metrics_workers
-- Registered workers, the age in seconds of the oldest heartbeat among them (0 when
-- none), and every kind some registered worker has a handler for.
-- No parameters.
SELECT count(*)::int AS workers,
       coalesce(extract(epoch FROM now() - min(heartbeat_at)), 0)::float8 AS heartbeat_age_max,
       coalesce((SELECT array_agg(DISTINCT k.kind ORDER BY k.kind)
                   FROM pgwake.workers AS w, unnest(w.kinds) AS k(kind)), '{}') AS kinds
  FROM pgwake.workers;

-- name: metrics_queue_depth
-- Jobs by status and kind, for the scheduled, queued and running states (the finished
-- history is not counted), with the seconds since the oldest of each group became due.
-- Kinds no registered worker handles are summed under '_unhandled', so the number of
-- groups is bounded by the handlers, whatever kinds applications insert. Each status
-- is read through its own partial index, so the cost grows with the active jobs, not
-- the history.
-- No parameters.
WITH handled AS (
    SELECT DISTINCT k.kind FROM pgwake.workers AS w, unnest(w.kinds) AS k(kind)
)
SELECT j.status,
       CASE WHEN h.kind IS NULL THEN '_unhandled' ELSE j.kind END AS kind,
       count(*)::int AS jobs,
       extract(epoch FROM now() - min(j.run_at))::float8 AS oldest_seconds
  FROM (SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
  LEFT JOIN handled AS h ON h.kind = j.kind
 GROUP BY 1, 2;

-- name: metrics_tenant_backlog
-- Queued jobs of the $1 tenants with the largest backlog, plus those of the tenants
-- in $2 (opt-in) whatever their rank.
-- $1 how many top tenants, $2 opt-in tenant ids (text[]).
WITH counts AS (
    SELECT tenant_id, count(*) AS jobs
      FROM pgwake.jobs
     WHERE status = 'queued'
     GROUP BY tenant_id
)
(SELECT tenant_id, jobs FROM counts ORDER BY jobs DESC, tenant_id LIMIT $1::int)
UNION
(SELECT tenant_id, jobs FROM counts WHERE tenant_id = ANY ($2::text[]));

-- name: status_kinds
-- For `pgwake status`: active jobs by kind and status (the view pgwake.queue_status,
-- which reads each status through its partial index), with the seconds the oldest
-- queued job of the kind has been due and the next scheduled run, plus the failed jobs
-- kept (dead letters) by kind (jobs_finished_idx). Never reads the history of succeeded
-- and cancelled jobs.
-- No parameters.
SELECT q.kind, q.status, q.jobs,
       extract(epoch FROM q.oldest_queued_wait)::float8 AS oldest_queued_seconds,
       q.next_scheduled_at
  FROM pgwake.queue_status AS q
UNION ALL
SELECT j.kind, 'failed', count(*), NULL, NULL
  FROM pgwake.jobs AS j
 WHERE j.status = 'failed'
 GROUP BY j.kind;

-- name: status_tenants
-- For `pgwake status`: the $1 tenants with the most queued jobs (the view
-- pgwake.tenant_backlog, which reads each status through its partial index), with the
-- seconds their oldest queued job has been due, and how many tenants have active and
-- queued jobs in all.
-- $1 how many tenants.
SELECT b.tenant_id, b.queued, b.running, b.scheduled,
       extract(epoch FROM b.oldest_queued_wait)::float8 AS oldest_queued_seconds,
       b.paused, b.max_concurrency, b.weight,
       count(*) OVER () AS active_tenants,
       count(*) FILTER (WHERE b.queued > 0) OVER () AS tenants_with_backlog
  FROM pgwake.tenant_backlog AS b
 ORDER BY b.queued DESC, b.running DESC, b.tenant_id
 LIMIT $1::int;

-- name: status_workers
-- For `pgwake status`: every registered worker with its heartbeat's age, the jobs it
-- runs now (jobs_running_tenant_idx), whether its liveness lock is held (not held: the process
-- or its connection is gone; the same lock as in workers_lost), and whether it is the
-- metrics leader (it holds the metrics lock of metrics_leader on a session whose
-- application_name, set in db.py, names its host and pid).
-- No parameters.
WITH locks AS (
    SELECT l.classid, l.objid, l.pid, a.application_name
      FROM pg_locks AS l
      LEFT JOIN pg_stat_activity AS a ON a.pid = l.pid
     WHERE l.locktype = 'advisory'
       AND l.granted
       AND l.objsubid = 2
       AND l.database = (SELECT d.oid FROM pg_database AS d
                          WHERE d.datname = current_database())
)
SELECT w.id, w.hostname, w.pid, w.kinds, w.concurrency, w.started_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_seconds,
       (SELECT count(*) FROM pgwake.jobs AS j
         WHERE j.claimed_by = w.id AND j.status = 'running') AS running,
       EXISTS (SELECT 1 FROM locks AS l
                WHERE l.classid = 1885828962::oid AND l.objid = w.lock_key::oid
                  AND l.pid = w.session_pid) AS lock_held,
       EXISTS (SELECT 1 FROM locks AS l
                WHERE l.classid = 1885828963::oid AND l.objid = 1::oid
                  AND l.application_name = 'pgwake@' || w.hostname || ':' || w.pid)
           AS metrics_leader
  FROM pgwake.workers AS w
 ORDER BY w.hostname, w.pid, w.id;
