-- Queries of `pgwake migrate` and of the schema check every worker makes at start
-- (listener/migrate.py).
--
-- Named blocks; listener/queries.py loads every sql/queries/*.sql file into QUERIES.
-- A block is a `-- name: <subject>_<verb>[_<detail>]` line, comment lines saying what
-- the statement does, a line giving its parameters ("$1 ..., $2 ..." or "No
-- parameters."), then the statement. The subject is the table or object the statement
-- is about, in the singular (job, worker, tenant, schedule, migration, leader,
-- listener, server); names are unique across all queries files. Tests PREPARE every
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
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_list
-- The migrations recorded as applied.
-- No parameters.
SELECT version, name, checksum FROM pgwake.schema_migrations ORDER BY version;

-- name: migration_record
-- Records one applied migration (inside the migration's own transaction).
-- $1 version, $2 name, $3 sha256 of the file.
INSERT INTO pgwake.schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: migration_get_latest
-- The highest applied migration. Fails with undefined_table (42P01) or
-- invalid_schema_name (3F000) when pgwake was never migrated here.
-- No parameters.
SELECT coalesce(max(version), 0) AS version FROM pgwake.schema_migrations;
