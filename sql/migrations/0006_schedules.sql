-- pgwake: compatible
-- 0006_schedules: cron schedules that enqueue jobs, once per slot across the fleet.

-- One row per schedule. The maintenance leader of a round (queries.sql:
-- schedules_due) enqueues the jobs of every slot that has come and moves next_run_at
-- to the next slot, in one transaction with the row locked: each slot is enqueued
-- exactly once, whatever the number of workers.
CREATE TABLE pgwake.schedules (
    name         text        PRIMARY KEY,
    -- Standard 5-field cron (minute hour day-of-month month day-of-week), evaluated in
    -- the time zone below.
    cron         text        NOT NULL,
    timezone     text        NOT NULL DEFAULT 'UTC',
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- The tenant to enqueue for; NULL: one job for every tenant in pgwake.tenants.
    tenant_id    text,
    priority     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 20,
    -- After downtime: 'skip' enqueues only the most recent missed slot, 'catch_up'
    -- every missed slot (at most 1000 per round).
    missed       text        NOT NULL DEFAULT 'skip',
    enabled      boolean     NOT NULL DEFAULT true,
    -- The next slot to enqueue; NULL until the leader first computes it.
    next_run_at  timestamptz,
    last_slot    timestamptz,
    -- Why the leader disabled the schedule (an invalid cron or time zone).
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schedules_name_not_empty
        CHECK (length(btrim(name)) > 0 AND length(name) <= 200),
    CONSTRAINT schedules_cron_not_empty CHECK (length(btrim(cron)) > 0),
    CONSTRAINT schedules_kind_not_empty CHECK (length(btrim(kind)) > 0 AND length(kind) <= 200),
    CONSTRAINT schedules_payload_must_be_json_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT schedules_missed_valid CHECK (missed IN ('skip', 'catch_up')),
    CONSTRAINT schedules_priority_between_minus_1000_and_1000
        CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT schedules_max_attempts_between_1_and_1000 CHECK (max_attempts BETWEEN 1 AND 1000)
);

CREATE INDEX schedules_due_idx ON pgwake.schedules (next_run_at) WHERE enabled;
