-- pgwake: compatible
-- 0008_views_by_status: the psql views read each active status through its own partial
-- index. One scan with status IN ('scheduled', 'queued', 'running') can use none of
-- them (each index's predicate names one status), so it read the whole table, finished
-- history included: about 130 ms beside 1,000,000 finished jobs, against a couple of
-- milliseconds status by status.

CREATE OR REPLACE VIEW pgwake.queue_status WITH (security_invoker = true) AS
SELECT j.kind,
       j.status,
       count(*) AS jobs,
       max(now() - j.run_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_wait,
       min(j.run_at) FILTER (WHERE j.status = 'scheduled') AS next_scheduled_at
  FROM (SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT kind, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
 GROUP BY j.kind, j.status;

CREATE OR REPLACE VIEW pgwake.tenant_backlog WITH (security_invoker = true) AS
SELECT j.tenant_id,
       count(*) FILTER (WHERE j.status = 'queued') AS queued,
       count(*) FILTER (WHERE j.status = 'running') AS running,
       count(*) FILTER (WHERE j.status = 'scheduled') AS scheduled,
       max(now() - j.run_at) FILTER (WHERE j.status = 'queued') AS oldest_queued_wait,
       coalesce(t.paused, false) AS paused,
       t.max_concurrency,
       coalesce(t.weight, 1) AS weight
  FROM (SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'scheduled'
        UNION ALL
        SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'queued'
        UNION ALL
        SELECT tenant_id, status, run_at FROM pgwake.jobs WHERE status = 'running') AS j
  LEFT JOIN pgwake.tenants AS t ON t.tenant_id = j.tenant_id
 GROUP BY j.tenant_id, t.paused, t.max_concurrency, t.weight;
