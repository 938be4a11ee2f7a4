-- pgwake: compatible
-- 0013_metrics_sample_time: the metrics leader records when it last sampled the queue,
-- so that every worker exports the age of the fleet's last sample
-- (pgwake_metrics_sample_age_seconds): a leader that hangs, or a session that is not
-- pgwake's holding the metrics lock, can no longer leave the fleet blind unseen.
--
-- Compatible with workers of 0012: they neither read nor write the new row or column
-- (their leader rounds lock their own rows of pgwake.leaders by name; the wider CHECK
-- accepts all they write), and they take the metrics lock as before, so they run
-- unchanged. One thing only is weaker during a rolling upgrade: while a worker of 0012
-- is the metrics leader it records no samples, so the newer workers export a growing
-- sample age and PgwakeMetricsSampleStale may fire until a new worker leads.

ALTER TABLE pgwake.leaders DROP CONSTRAINT leaders_name_known;
ALTER TABLE pgwake.leaders ADD CONSTRAINT leaders_name_known
    CHECK (name IN ('maintenance', 'metrics', 'promotion', 'retention', 'schedules'));

-- When this role's leader last completed a round; written by the metrics leader after
-- each sample (the 'metrics' row is never locked: that leader holds an advisory lock).
ALTER TABLE pgwake.leaders ADD COLUMN last_round_at timestamptz;

INSERT INTO pgwake.leaders (name) VALUES ('metrics');
