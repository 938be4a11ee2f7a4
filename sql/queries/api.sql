-- Queries of the Python enqueue API (listener/enqueue.py: `enqueue`, `enqueue_many` on
-- the application's own connection, asyncpg or psycopg 3, in its own transaction) and
-- of `pgwake enqueue`.
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.
--
-- Both statements take only types both drivers send alike (text, int, float8, bool,
-- timestamptz), never jsonb (an application's connection may have a codec of its own
-- for it): the payload and metadata are JSON text cast to jsonb, durations are
-- seconds, and depends_on is an array literal of ids as text (`{17,18}`), cast to
-- bigint[]; job_insert_many takes its jobs as one JSON text. A NULL takes the column's
-- default (the same defaults as pgwake.jobs: tests hold them together). The status is
-- the insert trigger's to set (scheduled when due later).

-- name: job_insert
-- Enqueues one job; nothing is returned when its unique key is taken (ON CONFLICT DO
-- NOTHING: by an active job, or with unique_for by a job of this window).
-- $1 tenant, $2 kind, $3 payload (JSON text), $4 priority, $5 run_at (NULL: now),
-- $6 seconds after run_at (NULL: 0), $7 max attempts, $8 unique key, $9 timeout in
-- seconds, $10 unique_for in seconds, $11 depends_on (an array literal as text, NULL:
-- none), $12 run_anyway (NULL: false), $13 metadata (JSON text, NULL: none).
INSERT INTO pgwake.jobs (tenant_id, kind, payload, priority, run_at, max_attempts, unique_key,
                         timeout, unique_for, depends_on, run_anyway, metadata)
VALUES (coalesce($1::text, 'default'), $2::text, coalesce($3::text, '{}')::jsonb,
        coalesce($4::int, 0),
        coalesce($5::timestamptz, now()) + make_interval(secs => coalesce($6::float8, 0)),
        coalesce($7::int, 20), $8::text,
        coalesce(make_interval(secs => $9::float8), interval '15 minutes'),
        make_interval(secs => $10::float8), $11::text::bigint[], coalesce($12::bool, false),
        $13::text::jsonb)
ON CONFLICT DO NOTHING
RETURNING id, status, unique_until;

-- name: job_insert_many
-- Enqueues one job per element of the columns of one JSON document (all of one length,
-- element i of each giving job i), in one statement; jobs whose unique key is taken are
-- skipped. The jobs travel as one text parameter, so neither driver encodes an array
-- element by element (psycopg does that in Python, quoting each payload); the document
-- is parsed once, and each payload and metadata object is a jsonb value of it, not a
-- text parsed again. Returns one row: the ids of the jobs inserted, in the order of the
-- columns (the identity numbers rows in the order ROWS FROM gives them), as one array (a
-- tenth of the cost of 10,000 rows of one id).
-- $1 the jobs: a JSON object of columns, each an array, "tenant_id", "kind", "payload"
-- (JSON objects), "priority", "run_at" (ISO 8601 text), "delay" (seconds after
-- run_at), "max_attempts", "unique_key", "timeout" and "unique_for" (seconds),
-- "depends_on" (array literals as text), "run_anyway", "metadata" (JSON objects): a
-- null element, or a column left out, takes the column's default.
WITH inserted AS (
    INSERT INTO pgwake.jobs (tenant_id, kind, payload, priority, run_at, max_attempts,
                             unique_key, timeout, unique_for, depends_on, run_anyway, metadata)
    SELECT coalesce(u.tenant_id, 'default'), u.kind, coalesce(u.payload, '{}'),
           coalesce(u.priority::int, 0),
           coalesce(u.run_at::timestamptz, now())
               + make_interval(secs => coalesce(u.delay::float8, 0)),
           coalesce(u.max_attempts::int, 20), u.unique_key,
           coalesce(make_interval(secs => u.timeout::float8), interval '15 minutes'),
           make_interval(secs => u.unique_for::float8), u.depends_on::bigint[],
           coalesce(u.run_anyway::bool, false), nullif(u.metadata, 'null')
      FROM (SELECT $1::text::jsonb AS c OFFSET 0) AS given,
           ROWS FROM (jsonb_array_elements_text(c -> 'tenant_id'),
                      jsonb_array_elements_text(c -> 'kind'),
                      jsonb_array_elements(c -> 'payload'),
                      jsonb_array_elements_text(c -> 'priority'),
                      jsonb_array_elements_text(c -> 'run_at'),
                      jsonb_array_elements_text(c -> 'delay'),
                      jsonb_array_elements_text(c -> 'max_attempts'),
                      jsonb_array_elements_text(c -> 'unique_key'),
                      jsonb_array_elements_text(c -> 'timeout'),
                      jsonb_array_elements_text(c -> 'unique_for'),
                      jsonb_array_elements_text(c -> 'depends_on'),
                      jsonb_array_elements_text(c -> 'run_anyway'),
                      jsonb_array_elements(c -> 'metadata'))
           AS u(tenant_id, kind, payload, priority, run_at, delay, max_attempts, unique_key,
                timeout, unique_for, depends_on, run_anyway, metadata)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{}') AS ids FROM inserted;
