-- Queries of the command line (listener/cli/): enqueue (its insert is the API's, in
-- api.sql), jobs, tenants (with the
-- rotation of their DSNs' key), schedules and status.
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.

-- name: job_get_key_holder
-- The job that holds a unique key, for `pgwake enqueue` when its insert was skipped:
-- the active job with the key (scheduled, queued or running; active is true), else the
-- job with the key and period $4 whose window is still open. Nothing when neither is
-- there (any more: the holder finished, or its window ended, since the insert).
-- $1 tenant, $2 kind, $3 unique key, $4 unique_for in seconds (NULL: none).
SELECT j.id, j.status, j.unique_until, j.status IN ('scheduled', 'queued', 'running') AS active
  FROM pgwake.jobs AS j
 WHERE j.tenant_id = $1 AND j.kind = $2 AND j.unique_key = $3
   AND (j.status IN ('scheduled', 'queued', 'running')
        OR (j.unique_until IS NOT NULL AND j.unique_for = make_interval(secs => $4::float8)
            AND j.unique_until > now()))
 ORDER BY j.status IN ('scheduled', 'queued', 'running') DESC, j.id DESC
 LIMIT 1;

-- name: job_list
-- Jobs, newest first, filtered; NULL filters match everything. Paged by id: $6 gives
-- the last id of the previous page (NULL for the first page).
-- $1 tenant, $2 kind, $3 status, $4 created at least this many seconds ago,
-- $5 page size, $6 list only ids below this, $7 metadata the job's must contain (jsonb
-- object, NULL: any; through jobs_metadata_idx).
SELECT j.id, j.tenant_id, j.kind, j.status, j.priority, j.attempts, j.max_attempts,
       j.created_at, j.run_at, j.started_at, j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error, j.metadata
  FROM pgwake.jobs AS j
 WHERE ($1::text IS NULL OR j.tenant_id = $1)
   AND ($2::text IS NULL OR j.kind = $2)
   AND ($3::text IS NULL OR j.status = $3)
   AND ($4::float8 IS NULL OR j.created_at < now() - make_interval(secs => $4::float8))
   AND ($6::bigint IS NULL OR j.id < $6)
   AND ($7::jsonb IS NULL OR j.metadata @> $7::jsonb)
 ORDER BY j.id DESC
 LIMIT $5::int;

-- name: job_list_archived
-- Archived jobs (pgwake.jobs_archive), newest first, filtered as job_list; NULL filters
-- match everything. Paged by id.
-- $1 tenant, $2 kind, $3 status, $4 page size, $5 list only ids below this,
-- $6 metadata the job's must contain (jsonb object, NULL: any).
SELECT a.id, a.tenant_id, a.kind, a.status, a.priority, a.attempts, a.max_attempts,
       a.created_at, a.run_at, a.started_at, a.finished_at,
       split_part(a.last_error, E'\n', 1) AS error, a.metadata, a.archived_at
  FROM pgwake.jobs_archive AS a
 WHERE ($1::text IS NULL OR a.tenant_id = $1)
   AND ($2::text IS NULL OR a.kind = $2)
   AND ($3::text IS NULL OR a.status = $3)
   AND ($5::bigint IS NULL OR a.id < $5)
   AND ($6::jsonb IS NULL OR a.metadata @> $6::jsonb)
 ORDER BY a.id DESC
 LIMIT $4::int;

-- name: job_get_archived
-- One archived job, every column (for `pgwake jobs show` of a job no longer in
-- pgwake.jobs).
-- $1 job id.
SELECT a.id, a.tenant_id, a.kind, a.status, a.payload, a.priority, a.attempts,
       a.max_attempts, a.created_at, a.run_at, a.started_at, a.finished_at, a.result,
       a.last_error, a.metadata, a.created_by, a.depends_on, a.run_anyway, a.archived_at
  FROM pgwake.jobs_archive AS a
 WHERE a.id = $1;

-- name: job_get
-- One job, every column (waiting_for: the dependencies a waiting job still waits for,
-- as counted so far).
-- $1 job id.
SELECT j.id, j.tenant_id, j.kind, j.status, j.payload, j.priority, j.attempts,
       j.max_attempts, j.unique_key,
       extract(epoch FROM j.unique_for)::float8 AS unique_for_seconds, j.unique_until,
       extract(epoch FROM j.timeout)::float8 AS timeout_seconds,
       j.claimed_by, j.created_at, j.run_at, j.started_at, j.finished_at,
       j.cancel_requested_at, j.progress, j.result, j.last_error,
       j.metadata, j.created_by, j.depends_on, j.run_anyway,
       CASE WHEN j.status = 'waiting'
            THEN coalesce((SELECT c.open FROM pgwake.job_waits AS c WHERE c.job_id = j.id),
                          j.waiting_for) END AS waiting_for
  FROM pgwake.jobs AS j
 WHERE j.id = $1;

-- name: job_list_dependencies
-- For `pgwake jobs show`: the jobs job $1 depends on (direction 'depends_on': each with
-- its status; a job removed by retention since has none) and the waiting jobs that
-- wait for it (direction 'waited_for_by', through jobs_waiting_depends_on_idx; at most
-- $2 of them), by id.
-- $1 job id, $2 most waiting jobs to list.
SELECT 'depends_on' AS direction, u.dep AS id, d.kind, d.status
  FROM pgwake.jobs AS j
 CROSS JOIN LATERAL (SELECT DISTINCT x.dep FROM unnest(j.depends_on) AS x(dep)) AS u
  LEFT JOIN pgwake.jobs AS d ON d.id = u.dep
 WHERE j.id = $1
UNION ALL
(SELECT 'waited_for_by', w.id, w.kind, w.status
   FROM pgwake.jobs AS w
  WHERE w.status = 'waiting' AND w.depends_on && ARRAY[$1::bigint]
  ORDER BY w.id
  LIMIT $2::int)
ORDER BY direction, id;

-- name: job_retry
-- Runs finished jobs again: failed or cancelled jobs (by id, or all failed ones of a
-- kind and tenant) go back to queued (waiting, when they have dependencies) with their
-- attempts reset, due now. last_error is
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
       SET status = CASE WHEN cardinality(j.depends_on) > 0 THEN 'waiting' ELSE 'queued' END,
           waiting_for = CASE WHEN cardinality(j.depends_on) > 0
                              THEN cardinality(j.depends_on) END,
           attempts = 0, run_at = now(), finished_at = NULL,
           result = NULL, progress = NULL, cancel_requested_at = NULL
      FROM chosen AS c
     WHERE j.id = c.id
       AND j.status IN ('failed', 'cancelled')
       AND NOT EXISTS (SELECT 1 FROM blocked AS b WHERE b.id = c.id)
    RETURNING j.id, j.tenant_id, j.kind, j.status
),
-- A retried job with dependencies waits for them again: released at once when they
-- have all succeeded, cancelled again when one failed (unless run_anyway).
rechecked AS (
    SELECT pgwake.jobs_settle_dependents(
               pgwake.jobs_recheck_waiting(array_agg(r.id) FILTER (WHERE r.status = 'waiting')))
               AS n
      FROM retried AS r
)
SELECT r.id, true AS retried, NULL::bigint AS held_by, NULL::boolean AS instead
  FROM retried AS r
 CROSS JOIN LATERAL pgwake.job_event(r.id, r.tenant_id, r.kind, r.status) AS e
 WHERE (SELECT n FROM rechecked) >= 0
 UNION ALL
SELECT b.id, false, b.held_by, b.instead FROM blocked AS b;

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

-- name: job_purge
-- Deletes finished jobs (never queued, scheduled or running ones) of a status that
-- finished long enough ago, but not those whose unique window (unique_until) is still
-- open: jobs_unique_window_idx holds their key through the row. Returns how many were
-- deleted (purged) and how many were kept for their window (kept).
-- $1 status (NULL: every finished status), $2 finished more than this many seconds ago
-- (NULL: any time).
WITH chosen AS (
    SELECT j.id, j.unique_until IS NOT NULL AND j.unique_until > now() AS window_open
      FROM pgwake.jobs AS j
     WHERE j.status IN ('succeeded', 'failed', 'cancelled')
       AND ($1::text IS NULL OR j.status = $1)
       AND ($2::float8 IS NULL OR j.finished_at < now() - make_interval(secs => $2::float8))
),
purged AS (
    DELETE FROM pgwake.jobs AS j
     USING chosen AS c
     WHERE j.id = c.id AND NOT c.window_open
    RETURNING 1
)
SELECT (SELECT count(*)::int FROM purged) AS purged,
       (SELECT count(*)::int FROM chosen WHERE window_open) AS kept;

-- name: tenant_list
-- Every tenant with settings, with its queued and running job counts; of its own
-- database only whether it has one and the id of the key that encrypted the DSN.
-- No parameters.
SELECT t.tenant_id, t.max_concurrency, t.weight, t.paused, t.rate_limit,
       extract(epoch FROM t.rate_period)::float8 AS rate_period_seconds,
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
SELECT tenant_id, max_concurrency, weight, paused, rate_limit,
       extract(epoch FROM rate_period)::float8 AS rate_period_seconds, db_dsn_encrypted,
       created_at, updated_at
  FROM pgwake.tenants
 WHERE tenant_id = $1;

-- name: tenant_add
-- Adds a tenant; returns nothing when it exists already.
-- $1 tenant id, $2 max concurrency (NULL: no fleet-wide cap), $3 weight, $4 paused,
-- $5 encrypted DSN (NULL: no database of its own), $6 rate limit and $7 its period in
-- seconds (both NULL: no rate limit).
INSERT INTO pgwake.tenants (tenant_id, max_concurrency, weight, paused, db_dsn_encrypted,
                            rate_limit, rate_period)
VALUES ($1, $2, $3, $4, $5, $6::int, make_interval(secs => $7::float8))
ON CONFLICT (tenant_id) DO NOTHING
RETURNING tenant_id;

-- name: tenant_update
-- Changes a tenant's settings; returns nothing when the tenant does not exist.
-- $1 tenant id; $2 whether to set max_concurrency, $3 its new value (NULL: no cap);
-- $4 new weight (NULL: keep); $5 whether to set the DSN, $6 the new ciphertext (NULL:
-- no database of its own); $7 whether to set the rate limit, $8 its rate and $9 its
-- period in seconds (both NULL: no rate limit). A change of the rate limit wakes the
-- workers (the trigger tenants_rate_change_takes_effect_at_once).
UPDATE pgwake.tenants
   SET max_concurrency = CASE WHEN $2::bool THEN $3::int ELSE max_concurrency END,
       weight = coalesce($4::int, weight),
       db_dsn_encrypted = CASE WHEN $5::bool THEN $6::text ELSE db_dsn_encrypted END,
       rate_limit = CASE WHEN $7::bool THEN $8::int ELSE rate_limit END,
       rate_period = CASE WHEN $7::bool THEN make_interval(secs => $9::float8)
                          ELSE rate_period END,
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

-- name: limit_set
-- Sets the rate limit of a kind, across tenants ($2 false) or within each tenant ($2
-- true), replacing the one it had; the workers are woken (the trigger
-- limits_change_takes_effect_at_once).
-- $1 kind, $2 per tenant, $3 jobs per period, $4 the period in seconds.
INSERT INTO pgwake.limits (kind, per_tenant, rate_limit, rate_period)
VALUES ($1, $2, $3, make_interval(secs => $4::float8))
ON CONFLICT (kind, per_tenant) DO UPDATE
   SET rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
       updated_at = now()
RETURNING kind;

-- name: limit_list
-- Every kind rate limit, with whether its window is full right now and until when.
-- No parameters.
SELECT l.kind, l.per_tenant, l.rate_limit,
       extract(epoch FROM l.rate_period)::float8 AS rate_period_seconds,
       (SELECT count(*) FROM pgwake.rate_windows AS r
         WHERE r.scope = CASE WHEN l.per_tenant THEN 'kind_tenant' ELSE 'kind' END
           AND r.kind = l.kind AND r.full_until > now()) AS held_back,
       l.created_at, l.updated_at
  FROM pgwake.limits AS l
 ORDER BY l.kind, l.per_tenant;

-- name: limit_remove
-- Removes a kind's rate limit (across tenants, or within each tenant); the workers are
-- woken. Returns nothing when there was none.
-- $1 kind, $2 per tenant.
DELETE FROM pgwake.limits WHERE kind = $1 AND per_tenant = $2 RETURNING kind;

-- name: tenant_list_dsns
-- Every encrypted tenant DSN, for key rotation.
-- No parameters.
SELECT tenant_id, db_dsn_encrypted FROM pgwake.tenants
 WHERE db_dsn_encrypted IS NOT NULL
 ORDER BY tenant_id;

-- name: tenant_replace_dsn
-- Replaces an encrypted DSN only if it is still the one read (compare-and-set), so a
-- rotation never overwrites a DSN changed meanwhile.
-- $1 tenant id, $2 the ciphertext read, $3 the new ciphertext.
UPDATE pgwake.tenants SET db_dsn_encrypted = $3, updated_at = now()
 WHERE tenant_id = $1 AND db_dsn_encrypted = $2
RETURNING tenant_id;

-- name: schedule_add
-- Adds a schedule (next_run_at is computed by the next round of the leader).
-- $1 name, $2 cron, $3 time zone, $4 kind, $5 payload, $6 tenant or NULL, $7 priority,
-- $8 max attempts, $9 missed-slot policy.
INSERT INTO pgwake.schedules (name, cron, timezone, kind, payload, tenant_id, priority,
                              max_attempts, missed)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)
RETURNING name;

-- name: schedule_list
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

-- name: job_count_by_kind
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

-- name: tenant_list_backlog
-- For `pgwake status`: the $1 tenants with the most queued jobs (the view
-- pgwake.tenant_backlog, which reads each status through its partial index), with the
-- seconds their oldest queued job has been due, and how many tenants have active and
-- queued jobs in all.
-- $1 how many tenants.
SELECT b.tenant_id, b.queued, b.running, b.scheduled,
       extract(epoch FROM b.oldest_queued_wait)::float8 AS oldest_queued_seconds,
       b.paused, b.max_concurrency, b.weight, b.waiting,
       count(*) OVER () AS active_tenants,
       count(*) FILTER (WHERE b.queued > 0) OVER () AS tenants_with_backlog
  FROM pgwake.tenant_backlog AS b
 ORDER BY b.queued DESC, b.running DESC, b.tenant_id
 LIMIT $1::int;

-- name: worker_list
-- For `pgwake status`: every registered worker with its heartbeat's age, the jobs it
-- runs now (jobs_running_tenant_idx), whether its liveness lock is held (not held: the process
-- or its connection is gone; the same lock as in worker_list_lost), and whether it is the
-- metrics leader (it holds the metrics lock of leader_elect_metrics on a session whose
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

-- name: job_count_finished_recent
-- For `pgwake status`: the drain. Jobs that ended for good (succeeded, failed,
-- cancelled) in the last $1 seconds, by kind, status and the whole minutes since they
-- ended (0: the last minute). Reads jobs_finished_idx over that window only, so its
-- cost grows with the jobs finished in the window, not with the history kept.
-- $1 the window in seconds.
SELECT j.kind, j.status,
       greatest(floor(extract(epoch FROM now() - j.finished_at) / 60), 0)::int AS minutes_ago,
       count(*) AS jobs
  FROM pgwake.jobs AS j
 WHERE j.status IN ('succeeded', 'failed', 'cancelled')
   AND j.finished_at > now() - make_interval(secs => $1::float8)
 GROUP BY j.kind, j.status, 3;

-- name: job_list_failed_latest
-- For `pgwake status`: the last errors by kind. For each kind with failed jobs kept,
-- its latest failure (id, tenant, attempts, when, the first line of its error, at most
-- 300 characters), with how many of its jobs failed in the last $1 seconds; the $2
-- kinds that failed last. Reads the failed jobs kept (jobs_finished_idx), never the
-- other history.
-- $1 the window in seconds, $2 how many kinds.
WITH latest AS (
    SELECT DISTINCT ON (j.kind) j.kind, j.id, j.tenant_id, j.attempts, j.finished_at,
           left(split_part(j.last_error, E'\n', 1), 300) AS error
      FROM pgwake.jobs AS j
     WHERE j.status = 'failed'
     ORDER BY j.kind, j.finished_at DESC, j.id DESC
)
SELECT l.kind, l.id, l.tenant_id, l.attempts, l.finished_at, l.error,
       extract(epoch FROM now() - l.finished_at)::float8 AS age_seconds,
       (SELECT count(*) FROM pgwake.jobs AS f
         WHERE f.status = 'failed' AND f.kind = l.kind
           AND f.finished_at > now() - make_interval(secs => $1::float8)) AS recent
  FROM latest AS l
 ORDER BY l.finished_at DESC, l.kind
 LIMIT $2::int;

-- name: job_list_retrying
-- For `pgwake status`: jobs waiting out the backoff after a failed attempt (scheduled,
-- with attempts used and an error), by kind: how many, and the first line of the error
-- of the one that failed last (at most 300 characters); the $1 kinds with the most.
-- An always-failing handler shows here long before its jobs run out of attempts.
-- Reads the scheduled jobs only (jobs_scheduled_idx).
-- $1 how many kinds.
SELECT j.kind, count(*) AS jobs,
       (array_agg(left(split_part(j.last_error, E'\n', 1), 300)
                  ORDER BY j.run_at DESC, j.id DESC))[1] AS error
  FROM pgwake.jobs AS j
 WHERE j.status = 'scheduled' AND j.attempts > 0 AND j.last_error IS NOT NULL
 GROUP BY j.kind
 ORDER BY count(*) DESC, j.kind
 LIMIT $1::int;

-- name: worker_list_unregistered
-- For `pgwake status`: worker processes declared lost that are still connected. The
-- maintenance leader declares a worker lost (hung: no heartbeat for heartbeat_timeout;
-- or gone), puts its jobs back and removes its row, but the process may live on with
-- its sessions, and with them its locks: its liveness lock, and the metrics lock when
-- it was the metrics leader (which then blinds the queue's metrics). A process counts
-- when one of its sessions holds a worker liveness lock that no registered worker's
-- heartbeat session holds, or the metrics lock, and no registered worker has its
-- application_name (pgwake@<host>:<pid>, db.py). Per process: its sessions on this
-- database, whether it holds the metrics lock, when its oldest session connected and
-- the seconds since any of them last changed state.
-- No parameters.
WITH held AS (
    SELECT l.pid, l.classid, l.objid
      FROM pg_locks AS l
     WHERE l.locktype = 'advisory'
       AND l.granted
       AND l.objsubid = 2
       AND l.classid IN (1885828962::oid, 1885828963::oid)
       AND l.database = (SELECT d.oid FROM pg_database AS d
                          WHERE d.datname = current_database())
),
claimed AS (
    SELECT a.application_name, bool_or(h.classid = 1885828963::oid) AS metrics_leader
      FROM held AS h
      JOIN pg_stat_activity AS a ON a.pid = h.pid
     WHERE a.application_name LIKE 'pgwake@%'
       AND NOT EXISTS (SELECT 1 FROM pgwake.workers AS w
                        WHERE h.classid = 1885828962::oid
                          AND w.lock_key::oid = h.objid AND w.session_pid = h.pid)
     GROUP BY a.application_name
)
SELECT c.application_name, c.metrics_leader,
       count(a.pid) AS sessions,
       min(a.backend_start) AS connected_at,
       extract(epoch FROM now() - max(a.state_change))::float8 AS idle_seconds
  FROM claimed AS c
  JOIN pg_stat_activity AS a
    ON a.application_name = c.application_name
   AND a.datname = current_database()
 WHERE NOT EXISTS (SELECT 1 FROM pgwake.workers AS w
                    WHERE 'pgwake@' || w.hostname || ':' || w.pid = c.application_name)
 GROUP BY c.application_name, c.metrics_leader
 ORDER BY c.application_name;

-- name: job_insert_ran
-- Records a run of `pgwake exec --record` as a job, with the outcome that run had,
-- written as a worker writes it: finished (succeeded, failed, cancelled) with its
-- result or error, or to run again (status queued, scheduled by the insert trigger
-- when the delay puts run_at ahead) with the attempt counted, or not for a snooze.
-- $1 tenant, $2 kind, $3 payload (jsonb), $4 timeout in seconds, $5 status, $6 attempts,
-- $7 seconds from now until it may run again (NULL: now), $8 result (jsonb), $9 error
-- text, $10 when the run started.
INSERT INTO pgwake.jobs (tenant_id, kind, payload, timeout, status, attempts, run_at,
                         started_at, finished_at, result, last_error)
VALUES ($1, $2, $3::jsonb, make_interval(secs => $4::float8), $5::text, $6::int,
        now() + make_interval(secs => coalesce($7::float8, 0)), $10::timestamptz,
        CASE WHEN $5::text IN ('succeeded', 'failed', 'cancelled') THEN now() END,
        $8::jsonb, $9::text)
RETURNING id, status;
