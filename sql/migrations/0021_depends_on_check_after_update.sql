-- pgwake: compatible
-- 0021_depends_on_check_after_update: the trigger that refuses a change of depends_on
-- runs after the row is updated instead of before.
--
-- A table with any BEFORE UPDATE row trigger has every row of every UPDATE locked
-- before its triggers are even looked at (PostgreSQL fetches the row for them under a
-- tuple lock, whatever their column list and WHEN clause say), and the lock is written
-- to the WAL. jobs_depends_on_unchanging never fires for pgwake's own statements, yet
-- it cost each outcome write one lock record per job (54 of the 1,055 bytes of WAL a
-- job cost beside 8 producers in `pgwake bench mixed`), on the WAL the producers'
-- commits wait for. An AFTER row trigger reads the row without locking it.
--
-- Same refusal: an UPDATE that changes depends_on fails with the same error, constraint
-- name and SQLSTATE, at the end of its statement rather than at the row, and the
-- transaction rolls back as before.
--
-- Compatible: no worker of 0020 names depends_on in an UPDATE.

DROP TRIGGER jobs_depends_on_unchanging ON pgwake.jobs;

CREATE TRIGGER jobs_depends_on_unchanging
    AFTER UPDATE OF depends_on ON pgwake.jobs
    FOR EACH ROW
    WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on)
    EXECUTE FUNCTION pgwake.jobs_before_update_of_depends_on();
