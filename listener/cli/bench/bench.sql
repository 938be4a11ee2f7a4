-- Queries of `pgwake bench` only (listener/cli/bench/), never run by a worker: loading
-- and inspecting a benchmark's own database, the raw-SQL ceiling and the raw-SQL
-- workers beside `mixed`'s producers. Loaded by
-- listener/cli/bench/queries.py into BENCH_QUERIES, apart from the runtime QUERIES.
--
-- Same format and naming rule as sql/queries/*.sql (see listener/queries.py; names are
-- unique across both). bench_create_fifo_index, bench_ceiling_claim and
-- bench_ceiling_delete keep their older names: they go with the claim queries, which
-- are tuned on their own.

-- name: worker_count_registered
-- How many workers are registered (benchmarks wait for theirs).
-- No parameters.
SELECT count(*) FROM pgwake.workers;

-- name: server_get_uptime
-- Seconds since the server started (the recovery benchmark waits out the grace after a
-- server start, during which lost workers are judged by the heartbeat timeout only).
-- No parameters.
SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8;

-- name: job_analyze
-- Fresh planner statistics for the queue tables after a bulk load.
-- No parameters.
ANALYZE pgwake.jobs, pgwake.tenants;

-- name: bench_create_fifo_index
-- The index job_claim_fifo needs; created only in benchmark databases.
-- No parameters.
CREATE INDEX IF NOT EXISTS jobs_fifo_idx ON pgwake.jobs (priority DESC, run_at, id)
    WHERE status = 'queued';

-- name: job_disable_insert_trigger
-- Disables the NOTIFY trigger on insert (only ever in a benchmark's own database, to
-- measure what the trigger costs). Not preparable (DDL).
-- No parameters.
ALTER TABLE pgwake.jobs DISABLE TRIGGER jobs_notify_after_insert;

-- name: job_enqueue_one
-- Enqueues one no-op job, as an application's plain INSERT does.
-- $1 tenant.
INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ($1, 'noop');

-- name: job_enqueue_many
-- Enqueues many jobs of one kind for one tenant, in one statement.
-- $1 tenant, $2 kind, $3 how many, $4 payload (jsonb).
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT $1, $2, $4::jsonb FROM generate_series(1, $3::int);

-- name: job_enqueue_arrays
-- Enqueues one job per element of the tenants and payloads arrays, in one statement,
-- as an application enqueuing a batch does.
-- $1 tenants (text[]), $2 kind, $3 payloads (jsonb[], same order as $1).
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT u.tenant_id, $2, u.payload FROM unnest($1::text[], $3::jsonb[]) AS u(tenant_id, payload);

-- name: job_enqueue_spread
-- Enqueues no-op jobs spread round-robin over tenants bench-t0, bench-t1, ..., numbered
-- so that successive chunks continue the spread.
-- $1 number of the first job, $2 how many jobs, $3 how many tenants.
INSERT INTO pgwake.jobs (tenant_id, kind)
SELECT 'bench-t' || (g % $3::int), 'noop'
  FROM generate_series($1::int, $1::int + $2::int - 1) AS g;

-- name: job_enqueue_spread_payload
-- job_enqueue_spread with a payload of $4 bytes as text in each job: {"blob": text}, the
-- text hex digits from md5 (they hardly compress, as real payloads of that size rarely
-- do), the same for every job of the statement.
-- $1 number of the first job, $2 how many jobs, $3 how many tenants, $4 payload bytes.
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
SELECT 'bench-t' || (g % $3::int), 'noop',
       jsonb_build_object('blob', (SELECT left(string_agg(md5(i::text), ''),
                                               greatest($4::int - 12, 0))
                                     FROM generate_series(0, $4::int / 32) AS i))
  FROM generate_series($1::int, $1::int + $2::int - 1) AS g;

-- name: tenant_limit_rate_spread
-- Rate-limits $1 of the tenants of job_enqueue_spread, spread evenly over them, to $3
-- jobs a second each.
-- $1 how many tenants to limit, $2 how many tenants there are, $3 jobs per second.
INSERT INTO pgwake.tenants (tenant_id, rate_limit, rate_period)
SELECT 'bench-t' || (g * ($2::int / greatest($1::int, 1))), $3::int, interval '1 second'
  FROM generate_series(0, $1::int - 1) AS g;

-- name: job_enqueue_started
-- Enqueues one job of kind bench.started (the latency and fairness benchmarks); returns
-- its id.
-- $1 tenant, $2 payload (jsonb).
INSERT INTO pgwake.jobs (tenant_id, kind, payload)
VALUES ($1, 'bench.started', $2::jsonb) RETURNING id;

-- name: job_enqueue_foreign
-- Enqueues one job for each of tenants foreign-0, foreign-1, ..., in one statement:
-- tenants whose only jobs are of a kind the benchmark's worker does not handle.
-- $1 how many tenants, $2 kind.
INSERT INTO pgwake.jobs (tenant_id, kind)
SELECT 'foreign-' || g, $2::text FROM generate_series(0, $1::int - 1) AS g;

-- name: job_insert_finished
-- Inserts succeeded jobs that finished two days ago, spread over tenants bench-t0,
-- bench-t1, ... (retention benchmark).
-- $1 number of the first job, $2 how many jobs, $3 how many tenants.
INSERT INTO pgwake.jobs (tenant_id, kind, status, attempts, created_at, finished_at)
SELECT 'bench-t' || (g % $3::int), 'noop', 'succeeded', 1,
       now() - interval '2 days', now() - interval '2 days'
  FROM generate_series($1::int, $1::int + $2::int - 1) AS g;

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

-- name: job_claim_raw
-- The raw-SQL worker of `pgwake bench mixed`, first write (benchmarks only; no pgwake
-- bookkeeping, no fairness): marks up to $2 queued jobs running, held by $1, as a
-- durable claim must, and returns their ids.
-- $1 claimant (uuid), $2 how many at most.
UPDATE pgwake.jobs AS j
   SET status = 'running', claimed_by = $1::uuid, attempts = j.attempts + 1,
       started_at = clock_timestamp()
  FROM (SELECT q.id FROM pgwake.jobs AS q
         WHERE q.status = 'queued'
         LIMIT $2::int
           FOR UPDATE SKIP LOCKED) AS c
 WHERE j.id = c.id
RETURNING j.id;

-- name: job_finish_raw
-- The raw-SQL worker's second write: the jobs job_claim_raw took succeeded, with the
-- time each started as its result (what job_list_started reads).
-- $1 job ids (bigint[]).
UPDATE pgwake.jobs
   SET status = 'succeeded', claimed_by = NULL, finished_at = now(),
       result = jsonb_build_object('started', extract(epoch FROM started_at))
 WHERE id = ANY ($1::bigint[]) AND status = 'running';

-- name: job_take_raw
-- The raw-SQL worker with one write per job: up to $1 queued jobs go straight to
-- succeeded, as if their handlers had run inside the claim. No job is ever seen
-- running, so a crash could not tell a job that ran from one that did not: a bound on
-- what a worker could save by not writing its claims, not a way to run jobs.
-- $1 how many at most.
UPDATE pgwake.jobs AS j
   SET status = 'succeeded', attempts = j.attempts + 1, started_at = clock_timestamp(),
       finished_at = clock_timestamp(),
       result = jsonb_build_object('started', extract(epoch FROM clock_timestamp()))
  FROM (SELECT q.id FROM pgwake.jobs AS q
         WHERE q.status = 'queued'
         LIMIT $1::int
           FOR UPDATE SKIP LOCKED) AS c
 WHERE j.id = c.id;

-- name: job_exists_active
-- Whether any job is still waiting, scheduled, queued or running: one probe of each
-- partial index, cheap enough to poll while a drain is timed.
-- No parameters.
SELECT EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'queued')
    OR EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'running')
    OR EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'scheduled')
    OR EXISTS (SELECT 1 FROM pgwake.jobs WHERE status = 'waiting');

-- name: job_count_finished
-- How many jobs have finished (succeeded or failed).
-- No parameters.
SELECT count(*) FROM pgwake.jobs WHERE status IN ('succeeded', 'failed');

-- name: job_count_held_by_pid
-- How many running jobs a worker process holds (recovery benchmark).
-- $1 the worker's pid.
SELECT count(*)::int
  FROM pgwake.jobs AS j
  JOIN pgwake.workers AS w ON w.id = j.claimed_by
 WHERE j.status = 'running' AND w.pid = $1;

-- name: job_list_started
-- Per finished job of kind bench.started: its id and the wall-clock time its handler
-- started (the handler's result).
-- No parameters.
SELECT id, (result ->> 'started')::float8 AS started
  FROM pgwake.jobs
 WHERE kind = 'bench.started' AND status = 'succeeded';

-- name: job_list_times
-- Per job: id, tenant, insert time and finish time (database clock).
-- No parameters.
SELECT id, tenant_id, created_at, finished_at FROM pgwake.jobs;

-- name: job_measure_drain
-- Seconds from the first claim to the last finish (database clock).
-- No parameters.
SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM pgwake.jobs;

-- name: job_measure_drain_of
-- Seconds from the first claim to the last finish of the jobs of some tenants
-- (database clock).
-- $1 prefix of those tenants' ids.
SELECT extract(epoch FROM max(finished_at) - min(started_at))::float8
  FROM pgwake.jobs
 WHERE starts_with(tenant_id, $1::text);

-- name: job_measure_claim_gap
-- The longest time, in milliseconds, between two successive claims of the jobs of some
-- tenants: a claim stamps its jobs with its transaction's start (started_at), so while
-- a backlog drains this bounds the slowest claim from above.
-- $1 prefix of those tenants' ids.
SELECT coalesce(max(g.gap), 0)::float8
  FROM (SELECT extract(epoch FROM d.s - lag(d.s) OVER (ORDER BY d.s)) * 1000 AS gap
          FROM (SELECT DISTINCT started_at AS s
                  FROM pgwake.jobs
                 WHERE starts_with(tenant_id, $1::text)) AS d) AS g;

-- name: job_insert_chain
-- A chain of $1 echo jobs in one plain INSERT, each depending on the one before (ids
-- from the jobs' sequence, rows inserted in id order), for the chain benchmark.
-- $1 links.
WITH ids AS (SELECT g, nextval('pgwake.jobs_id_seq') AS id FROM generate_series(1, $1::int) g)
INSERT INTO pgwake.jobs (id, kind, depends_on)
SELECT i.id, 'echo', CASE WHEN i.g > 1 THEN ARRAY[lag(i.id) OVER (ORDER BY i.g)] END
  FROM ids AS i
 ORDER BY i.g;

-- name: job_list_chain_gaps
-- For each job of a chain, seconds from its predecessor's outcome (finished_at) to its
-- own claim (started_at), and whether it started after that outcome; by id.
-- No parameters.
SELECT j.id, j.status,
       extract(epoch FROM j.started_at - p.finished_at)::float8 AS gap,
       j.started_at >= p.finished_at AS in_order
  FROM pgwake.jobs AS j
  JOIN pgwake.jobs AS p ON p.id = j.depends_on[1]
 ORDER BY j.id;

-- name: job_enqueue_dag_root
-- The root of the workflow benchmark's DAG (bench.dag_root), which enqueues the rest
-- with its outcome.
-- $1 the DAG's width.
INSERT INTO pgwake.jobs (kind, payload) VALUES ('bench.dag_root', jsonb_build_object('width', $1::int));

-- name: job_count_by_status
-- Jobs by status (the workflow benchmark checks that every job of its DAG succeeded).
-- No parameters.
SELECT status, count(*)::int AS jobs FROM pgwake.jobs GROUP BY status ORDER BY status;
