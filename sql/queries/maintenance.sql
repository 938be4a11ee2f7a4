-- Queries of the leader loops (listener/maintenance/): promotion of scheduled jobs,
-- recovery of lost workers' jobs, retention, and schedules.
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.

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

-- name: job_get_next_due
-- Seconds until the earliest scheduled job is due (0 when one is already due), or NULL
-- when none is scheduled.
-- No parameters.
SELECT CASE WHEN min(run_at) IS NOT NULL
            THEN greatest(extract(epoch FROM (min(run_at) - now())), 0)::float8
       END AS seconds
  FROM pgwake.jobs
 WHERE status = 'scheduled';

-- name: leader_elect_maintenance
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

-- name: worker_list_lost
-- Workers that are gone or hung, locked for recovery (in the leader's transaction):
-- - lost for want of its lock: its liveness lock is no longer held by its heartbeat
--   session (session_pid; the same key held by any other session does not count) and
--   its last heartbeat is older than $1 seconds (a few heartbeat intervals, so a live
--   worker whose session was cut has beaten again from a new one). Judged only once the
--   server has been up for $2 seconds, so that after a server restart live workers have
--   had time to reconnect and take their locks again.
-- - lost for its silence: no heartbeat for $2 seconds, lock or not.
-- why says which: 'hung' while its heartbeat session still holds the lock (alive but
-- silent: an event loop blocked, a stopped process, a partitioned host); otherwise
-- 'restarted' when a worker registered on the same host after its last heartbeat (the
-- service manager started it again), else 'gone' (the process or its connection died).
-- However long ago it died, a worker whose lock is gone is never called hung.
-- FOR UPDATE waits for a claim of that worker in flight (which holds KEY SHARE), so the
-- recovery that follows sees every job the worker claimed.
-- $1 grace in seconds (one and a half heartbeat intervals), $2 heartbeat timeout in seconds.
SELECT w.id, w.hostname, w.pid,
       CASE WHEN lock.held THEN 'hung'
            WHEN EXISTS (SELECT 1 FROM pgwake.workers AS n
                          WHERE n.hostname = w.hostname
                            AND n.id <> w.id
                            AND n.started_at > w.heartbeat_at) THEN 'restarted'
            ELSE 'gone'
       END AS why,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS silent_seconds
  FROM pgwake.workers AS w
 CROSS JOIN LATERAL (
       SELECT EXISTS (SELECT 1
                        FROM pg_locks AS l
                       WHERE l.locktype = 'advisory'
                         AND l.database = (SELECT d.oid FROM pg_database AS d
                                            WHERE d.datname = current_database())
                         AND l.classid = 1885828962::oid
                         AND l.objid = w.lock_key::oid
                         AND l.objsubid = 2
                         AND l.pid = w.session_pid
                         AND l.granted) AS held) AS lock
 WHERE w.heartbeat_at < now() - make_interval(secs => $2)
    OR (w.heartbeat_at < now() - make_interval(secs => $1)
        AND now() - pg_postmaster_start_time() > make_interval(secs => $2)
        AND NOT lock.held)
   FOR UPDATE OF w;

-- name: worker_end_sessions
-- Ends the sessions of the workers in $1 (declared lost this round), so that what they
-- hold goes free (the metrics lock above all) even when the process is stopped or cut
-- off rather than dead. A worker's sessions are those of this database whose
-- application_name is 'pgwake@<hostname>:<pid>' (set by db.py; a name longer than 63
-- bytes is cut by the server and matches nothing), except this session, and except
-- when another registered worker has the same hostname and pid (a new process that
-- reused the pid of a dead one, in a container restarted under the same hostname): the
-- sessions may be its. Only sessions this role may signal are ended: those of a role
-- whose privileges it has, or, with the privileges of pg_signal_backend, any
-- non-superuser's; the others are counted as left.
-- $1 the lost workers' ids (uuid[]).
WITH lost AS (
    SELECT w.hostname, w.pid
      FROM pgwake.workers AS w
     WHERE w.id = ANY ($1::uuid[])
       AND NOT EXISTS (SELECT 1 FROM pgwake.workers AS o
                        WHERE o.hostname = w.hostname AND o.pid = w.pid
                          AND o.id <> ALL ($1::uuid[]))
), sessions AS (
    SELECT a.pid,
           coalesce((r.rolsuper IS NOT TRUE
                     OR (SELECT me.rolsuper FROM pg_roles AS me WHERE me.rolname = current_user))
                    AND (pg_has_role(a.usesysid, 'USAGE')
                         OR pg_has_role('pg_signal_backend', 'USAGE')), false) AS may_signal
      FROM pg_stat_activity AS a
      JOIN lost AS l ON a.application_name = 'pgwake@' || l.hostname || ':' || l.pid
      LEFT JOIN pg_roles AS r ON r.oid = a.usesysid
     WHERE a.datname = current_database()
       AND a.pid <> pg_backend_pid()
)
SELECT count(*) FILTER (WHERE may_signal AND pg_terminate_backend(pid))::int AS ended,
       count(*) FILTER (WHERE NOT may_signal)::int AS left_alone
  FROM sessions;

-- name: job_recover
-- Puts back up to $3 running jobs of lost workers: queued again, or failed when the
-- lost attempt was their last, or cancelled when their cancellation was requested
-- (pgwake.cancel_job; the request is never lost with the worker). The attempt counts
-- (it was counted when claimed) and the reason goes to last_error. Also takes running
-- jobs whose claimant is not registered at all; the jobs waiting for one that failed or
-- was cancelled are settled. Returns each job, its new status, and the lost worker it was taken from
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
),
settled AS (
    SELECT pgwake.jobs_settle_dependents(
               array_agg(r.id) FILTER (WHERE r.status IN ('failed', 'cancelled'))) AS n
      FROM recovered AS r
)
SELECT r.id, r.status, r.lost_worker
  FROM recovered AS r
 CROSS JOIN LATERAL pgwake.job_event(r.id, r.tenant_id, r.kind, r.status) AS e
 WHERE (SELECT n FROM settled) >= 0;

-- name: worker_remove_lost
-- Deletes lost workers that hold no running job any more. Returns their ids.
-- $1 lost worker ids (uuid[]).
DELETE FROM pgwake.workers AS w
 WHERE w.id = ANY ($1::uuid[])
   AND NOT EXISTS (SELECT 1 FROM pgwake.jobs AS j
                    WHERE j.claimed_by = w.id AND j.status = 'running')
RETURNING w.id;

-- name: job_prune
-- One batch of retention: deletes up to $3 jobs with status $1 (succeeded, failed or
-- cancelled only) that finished more than $2 seconds ago, oldest first, and whose
-- unique window (unique_until), if any, has ended: jobs_unique_window_idx holds a
-- key through the row until then. Takes the
-- retention lock (the 'retention' row of pgwake.leaders) for its transaction first;
-- leader is false (and nothing is deleted) when another worker holds it.
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
       AND (j.unique_until IS NULL OR j.unique_until <= now())
     ORDER BY j.finished_at
     LIMIT $3::int
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM pgwake.jobs AS j WHERE j.id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT ok FROM leader) AS leader, (SELECT count(*)::int FROM deleted) AS deleted;

-- name: job_prune_to_archive
-- job_prune with the archive on (setting retention_archive): the same batch of up to $3
-- jobs with status $1 past $2 seconds is moved into pgwake.jobs_archive, in the
-- statement that deletes it, instead of being deleted. Takes the retention lock as
-- job_prune does; leader is false (and nothing moves) when another worker holds it.
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
       AND (j.unique_until IS NULL OR j.unique_until <= now())
     ORDER BY j.finished_at
     LIMIT $3::int
       FOR UPDATE SKIP LOCKED
),
moved AS (
    DELETE FROM pgwake.jobs AS j WHERE j.id IN (SELECT id FROM doomed)
    RETURNING j.id, j.tenant_id, j.kind, j.payload, j.priority, j.run_at, j.max_attempts,
              j.status, j.attempts, j.created_at, j.started_at, j.finished_at, j.last_error,
              j.result, j.depends_on, j.run_anyway, j.metadata, j.created_by
),
archived AS (
    INSERT INTO pgwake.jobs_archive (id, tenant_id, kind, payload, priority, run_at,
                                     max_attempts, status, attempts, created_at, started_at,
                                     finished_at, last_error, result, depends_on, run_anyway,
                                     metadata, created_by)
    SELECT m.id, m.tenant_id, m.kind, m.payload, m.priority, m.run_at, m.max_attempts,
           m.status, m.attempts, m.created_at, m.started_at, m.finished_at, m.last_error,
           m.result, m.depends_on, m.run_anyway, m.metadata, m.created_by
      FROM moved AS m
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT ok FROM leader) AS leader, (SELECT count(*)::int FROM moved) AS deleted,
       (SELECT count(*)::int FROM archived) AS archived;

-- name: job_prune_archived
-- One batch of the archive's retention: deletes up to $2 archived jobs archived more
-- than $1 seconds ago, oldest first, under the retention lock (leader false: another
-- worker holds it, nothing deleted).
-- $1 seconds an archived job is kept, $2 batch size.
WITH leader AS (
    SELECT EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                   WHERE l.name = 'retention'
                                     FOR NO KEY UPDATE SKIP LOCKED) AS held) AS ok
),
doomed AS (
    SELECT a.id
      FROM pgwake.jobs_archive AS a
     WHERE (SELECT ok FROM leader)
       AND a.archived_at < now() - make_interval(secs => $1::float8)
     ORDER BY a.archived_at
     LIMIT $2::int
       FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM pgwake.jobs_archive AS a WHERE a.id IN (SELECT id FROM doomed) RETURNING 1
)
SELECT (SELECT ok FROM leader) AS leader, (SELECT count(*)::int FROM deleted) AS deleted;

-- name: limit_prune_windows
-- One batch of the rate limits' retention: deletes up to $1 rows of pgwake.rate_windows
-- whose key has started nothing for a whole period and a second (every start it logs
-- is older, and so is pruned_until), that are not full, and that no claim holds (SKIP
-- LOCKED: a claim locks its keys' rows). Such a row tells a claim nothing an empty one
-- would not: the key may start its whole limit, and pgwake.rate_free creates the row
-- again on first use. Without this, a row stayed for every tenant that ever started a
-- job under a per-tenant limit. A key's period is its tenant's (scope 'tenant') or its
-- kind's limit's; a row whose limit is gone is deleted by the limits' trigger, and one
-- left without a period is kept. Takes the retention lock as job_prune does; leader
-- is false (and nothing is deleted) when another worker holds it.
-- $1 batch size.
WITH leader AS (
    SELECT EXISTS (SELECT 1 FROM (SELECT l.name FROM pgwake.leaders AS l
                                   WHERE l.name = 'retention'
                                     FOR NO KEY UPDATE SKIP LOCKED) AS held) AS ok
),
doomed AS (
    SELECT r.scope, r.kind, r.tenant_id
      FROM pgwake.rate_windows AS r
      LEFT JOIN pgwake.tenants AS t
        ON r.scope = 'tenant' AND t.tenant_id = r.tenant_id
      LEFT JOIN pgwake.limits AS k
        ON r.scope <> 'tenant' AND k.kind = r.kind AND k.per_tenant = (r.scope = 'kind_tenant')
     WHERE (SELECT ok FROM leader)
       AND (r.full_until IS NULL OR r.full_until < now())
       AND coalesce(r.pruned_until, '-infinity')
           < now() - coalesce(t.rate_period, k.rate_period) - interval '1 second'
       AND NOT EXISTS (SELECT 1 FROM unnest(r.started_at) AS s(at)
                        WHERE s.at >= now() - coalesce(t.rate_period, k.rate_period)
                                    - interval '1 second')
     LIMIT $1::int
       FOR UPDATE OF r SKIP LOCKED
),
deleted AS (
    DELETE FROM pgwake.rate_windows AS r
     USING doomed AS d
     WHERE (r.scope, r.kind, r.tenant_id) = (d.scope, d.kind, d.tenant_id)
    RETURNING 1
)
SELECT (SELECT ok FROM leader) AS leader, (SELECT count(*)::int FROM deleted) AS deleted;

-- name: leader_elect_schedules
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

-- name: schedule_list_due
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

-- name: job_settle_waiting
-- One step of the sweep of waiting jobs (pgwake.jobs_sweep_waiting), by the maintenance
-- leader: the next $2 waiting jobs after id $1 are looked at, and those whose
-- dependencies have all finished are released or cancelled. This settles a job whose
-- dependency finished while its inserting transaction was still open, or whose
-- dependency's outcome a worker of an older schema wrote.
-- Returns the last id looked at (0: start again) and how many jobs were settled.
-- $1 the last id of the previous step (0 to start), $2 how many to look at.
SELECT s.last_id, s.settled FROM pgwake.jobs_sweep_waiting($1::bigint, $2::int) AS s;
