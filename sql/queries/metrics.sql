-- Queries of the metrics sampler (listener/metrics.py): the metrics lock and the
-- database-derived gauges its leader samples.
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.

-- name: leader_elect_metrics
-- Tries to take the metrics lock for the rest of the session: true for at most one
-- worker of the fleet, which then keeps this connection and alone samples the
-- database-derived gauges. The lock is released when the connection goes back to the
-- pool (its reset unlocks every advisory lock) or dies with the worker.
-- No parameters.
SELECT pg_try_advisory_lock(1885828963, 1);

-- name: leader_set_sample_timeout
-- Bounds every statement of the metrics leader's sample transaction to $1 (a
-- statement_timeout for the transaction only), so a sample that cannot finish (a lock
-- held on pgwake.jobs, a server that stalls) fails and the leader steps down.
-- $1 the timeout, as PostgreSQL reads it (text: '5000ms').
SELECT set_config('statement_timeout', $1::text, true);

-- name: leader_record_metrics_sample
-- Records, in the sample's own transaction, that the metrics leader took a sample now
-- (the 'metrics' row of pgwake.leaders), for every worker to export its age.
-- No parameters.
UPDATE pgwake.leaders SET last_round_at = now() WHERE name = 'metrics';

-- name: leader_get_metrics_sample_age
-- Seconds since the metrics leader (whichever worker it was) last took a sample; NULL
-- when none ever did.
-- No parameters.
SELECT extract(epoch FROM clock_timestamp() - last_round_at)::float8 AS age
  FROM pgwake.leaders
 WHERE name = 'metrics';

-- name: worker_count
-- Registered workers, the age in seconds of the oldest heartbeat among them (0 when
-- none), and every kind some registered worker has a handler for.
-- No parameters.
SELECT count(*)::int AS workers,
       coalesce(extract(epoch FROM now() - min(heartbeat_at)), 0)::float8 AS heartbeat_age_max,
       coalesce((SELECT array_agg(DISTINCT k.kind ORDER BY k.kind)
                   FROM pgwake.workers AS w, unnest(w.kinds) AS k(kind)), '{}') AS kinds
  FROM pgwake.workers;

-- name: worker_list_heartbeats
-- Each registered worker (id, hostname, pid) and the seconds since its last heartbeat,
-- as the database says: the leader exports them, so a hung worker's silence shows even
-- though its own gauge cannot be scraped. One row per registered worker.
-- No parameters.
SELECT w.id::text AS id, w.hostname, w.pid,
       greatest(extract(epoch FROM now() - w.heartbeat_at), 0)::float8 AS heartbeat_age
  FROM pgwake.workers AS w
 ORDER BY w.hostname, w.pid, w.id;

-- name: job_count_active
-- Jobs by status and kind, for the waiting, scheduled, queued and running states (the finished
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
  FROM (SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'waiting'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
  LEFT JOIN handled AS h ON h.kind = j.kind
 GROUP BY 1, 2;

-- name: tenant_count_queued
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

-- name: limit_list_held_back
-- The rate limit keys held back right now (their window is full): each key's scope
-- (tenant, kind, kind_tenant), kind and tenant ('' where the scope has none), seconds
-- until it opens, and how many keys of its scope are held back; at most $1 keys, those
-- held back longest first.
-- $1 how many keys at most.
SELECT r.scope, r.kind, r.tenant_id,
       extract(epoch FROM r.full_until - now())::float8 AS opens_in,
       count(*) OVER (PARTITION BY r.scope) AS in_scope
  FROM pgwake.rate_windows AS r
 WHERE r.full_until > now()
 ORDER BY r.full_until DESC, r.scope, r.kind, r.tenant_id
 LIMIT $1::int;
