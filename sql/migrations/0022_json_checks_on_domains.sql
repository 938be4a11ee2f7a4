-- pgwake: compatible
-- 0022_json_checks_on_domains: the checks of payload and metadata move from the table to
-- the columns' types (domains over jsonb), so that they run when a value is written to
-- those columns and never when a row is updated otherwise.
--
-- PostgreSQL checks every CHECK constraint of a table on every row an UPDATE writes,
-- whatever columns it sets. Two of them read the whole payload (jsonb_typeof, and
-- octet_length of its text), and a large payload is stored out of line (compressed
-- where it compresses), so each claim, outcome write, progress report or cancel
-- request of a job fetched its payload and printed it as text, twice. Measured on PostgreSQL 15: a claim of 1,000 jobs whose
-- payloads are 100 KB took 263 to 319 ms, and their outcome write 238 to 318 ms; without
-- those two checks, 15 and 16 ms. A domain's checks run only where a value of the domain
-- is made: an INSERT (or an UPDATE that sets the column), as before.
--
-- Same refusals: the domains' constraints keep the names of the table's (an error names
-- jobs_payload_must_be_json_object as before), and the same conditions. An invalid
-- payload is now refused before the row's other checks (a domain is checked when the
-- value is made, the table's checks once the row is complete).
--
-- The columns change type without rewriting the table (a domain with no constraint
-- yet is binary-compatible with jsonb; jobs_metadata_idx is rebuilt). The constraints
-- are then added NOT VALID: every row already passed the same conditions as table
-- constraints, so they are not read again (validating would read every payload of
-- the table under a lock that blocks claims). failed_jobs returns its payload as
-- jsonb, as before; it is redefined around the change rather than dropped, so the
-- grants given to roles stay.
--
-- Compatible with workers of 0021: their statements read payload as before (asyncpg
-- decodes a domain as its base type) and never write payload or metadata.

-- The view reads payload: while the column changes type, it returns a NULL of the
-- same type, then payload again (as jsonb, the view's column type).
CREATE OR REPLACE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
SELECT j.id,
       j.tenant_id,
       j.kind,
       j.attempts,
       j.max_attempts,
       j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error,
       NULL::jsonb AS payload
  FROM pgwake.jobs AS j
 WHERE j.status = 'failed'
 ORDER BY j.finished_at DESC;

CREATE DOMAIN pgwake.job_payload AS jsonb;
CREATE DOMAIN pgwake.job_metadata AS jsonb;

ALTER TABLE pgwake.jobs
    DROP CONSTRAINT jobs_payload_must_be_json_object,
    DROP CONSTRAINT jobs_payload_at_most_1mib,
    DROP CONSTRAINT jobs_metadata_must_be_json_object,
    DROP CONSTRAINT jobs_metadata_at_most_64kib,
    ALTER COLUMN payload TYPE pgwake.job_payload,
    ALTER COLUMN metadata TYPE pgwake.job_metadata;

ALTER DOMAIN pgwake.job_payload ADD CONSTRAINT jobs_payload_must_be_json_object
    CHECK (jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN pgwake.job_payload ADD CONSTRAINT jobs_payload_at_most_1mib
    CHECK (octet_length(VALUE::text) <= 1048576) NOT VALID;
ALTER DOMAIN pgwake.job_metadata ADD CONSTRAINT jobs_metadata_must_be_json_object
    CHECK (VALUE IS NULL OR jsonb_typeof(VALUE) = 'object') NOT VALID;
ALTER DOMAIN pgwake.job_metadata ADD CONSTRAINT jobs_metadata_at_most_64kib
    CHECK (VALUE IS NULL OR octet_length(VALUE::text) <= 65536) NOT VALID;

COMMENT ON DOMAIN pgwake.job_payload IS
    'pgwake.jobs.payload: a JSON object of at most 1 MiB as text, checked when written.';
COMMENT ON DOMAIN pgwake.job_metadata IS
    'pgwake.jobs.metadata: NULL or a JSON object of at most 64 KiB as text, checked when written.';

CREATE OR REPLACE VIEW pgwake.failed_jobs WITH (security_invoker = true) AS
SELECT j.id,
       j.tenant_id,
       j.kind,
       j.attempts,
       j.max_attempts,
       j.finished_at,
       split_part(j.last_error, E'\n', 1) AS error,
       j.payload::jsonb AS payload
  FROM pgwake.jobs AS j
 WHERE j.status = 'failed'
 ORDER BY j.finished_at DESC;
