-- Queries of `pgwake migrate` and of the schema check every worker makes at start and
-- while it runs (listener/migrate.py, listener/schema_watch.py).
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server, limit); names are unique across all queries files. Tests PREPARE every
-- block against the migrated schema and hold every block to this format.

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
    applied_at timestamptz NOT NULL DEFAULT now(),
    breaking   boolean
);

-- name: migration_create_column_breaking
-- Third step of every migrate run: the column of marks, for a table made before pgwake
-- recorded them (its rows get their marks from their files, migration_set_breaking).
-- No parameters.
ALTER TABLE pgwake.schema_migrations ADD COLUMN IF NOT EXISTS breaking boolean;

-- name: migration_list
-- The migrations recorded as applied, with their marks (NULL: applied before pgwake
-- recorded marks).
-- No parameters.
SELECT version, name, checksum, breaking FROM pgwake.schema_migrations ORDER BY version;

-- name: migration_record
-- Records one applied migration and its mark (inside the migration's own transaction).
-- $1 version, $2 name, $3 sha256 of the file without its mark line, $4 whether it
-- breaks older workers.
INSERT INTO pgwake.schema_migrations (version, name, checksum, breaking)
VALUES ($1, $2, $3, $4);

-- name: migration_set_breaking
-- Records the mark of a migration applied before pgwake recorded marks (from its file);
-- a mark already recorded is never changed.
-- $1 version, $2 whether it breaks older workers.
UPDATE pgwake.schema_migrations SET breaking = $2 WHERE version = $1 AND breaking IS NULL;

-- name: migration_list_newer
-- The migrations applied past a worker's own schema, with their marks: the worker runs
-- against the database only when every one of them is marked compatible (breaking is
-- false; NULL counts as breaking). Read at start and once per heartbeat interval.
-- $1 the newest schema version the worker knows.
SELECT version, name, breaking FROM pgwake.schema_migrations WHERE version > $1 ORDER BY version;

-- name: migration_get_latest
-- The highest applied migration. Fails with undefined_table (42P01) or
-- invalid_schema_name (3F000) when pgwake was never migrated here.
-- No parameters.
SELECT coalesce(max(version), 0) AS version FROM pgwake.schema_migrations;
