-- pgwake: compatible
-- 0005_retention_views: finished jobs by status and age (retention, dead letters), and
-- views for people who live in psql.

-- Retention deletes finished jobs oldest first, per status; the failed-jobs view lists
-- the newest failures first. Neither touches queued or running rows.
CREATE INDEX jobs_finished_idx ON pgwake.jobs (status, finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled');

-- Active jobs by kind and status, with how long the oldest queued one has been due.
-- security_invoker: a role confined to its tenants sees only its tenants here too.
CREATE VIEW pgwake.queue_status WITH (security_invoker = true) AS
SELECT j.kind,
       j.status,
       count(*) AS jobs,
       max(now() - j.run_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_wait,
       min(j.run_at) FILTER (WHERE j.status = 'scheduled') AS next_scheduled_at
  FROM pgwake.jobs AS j
 WHERE j.status IN ('scheduled', 'queued', 'running')
 GROUP BY j.kind, j.status;

-- The dead letters: failed jobs, newest first, with the first line of their error.
CREATE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
SELECT j.id,
       j.tenant_id,
       j.kind,
       j.attempts,
       j.max_attempts,
       j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error,
       j.payload
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
       coalesce(t.weight, 1) AS weight
  FROM pgwake.jobs AS j
  LEFT JOIN pgwake.tenants AS t ON t.tenant_id = j.tenant_id
 WHERE j.status IN ('scheduled', 'queued', 'running')
 GROUP BY j.tenant_id, t.paused, t.max_concurrency, t.weight;
