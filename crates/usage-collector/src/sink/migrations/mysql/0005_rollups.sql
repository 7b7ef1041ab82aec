-- Summaries kept up to date by the collector instead of scanning every event table: the
-- collector adds each batch's newly inserted rows to them in the batch's own transaction, so
-- a repeated event (a retry, a replay, a second collector) adds nothing. Reading a summary
-- reads only the summary.
--
-- Counts per day and service, each split over a few shards so that concurrent transactions
-- (several write streams, several collectors) rarely wait for each other's row: a reader sums
-- the shards. `daily_usage_summary` stays a view with its columns and meaning (totals per day
-- over every service), now over this table's few rows per day.
CREATE TABLE IF NOT EXISTS daily_usage_by_service (
    `date` DATE NOT NULL,
    service VARCHAR(128) NOT NULL,
    shard SMALLINT NOT NULL DEFAULT 0,
    sessions BIGINT NOT NULL DEFAULT 0,
    page_visits BIGINT NOT NULL DEFAULT 0,
    programs_run BIGINT NOT NULL DEFAULT 0,
    program_errors BIGINT NOT NULL DEFAULT 0,
    features_used BIGINT NOT NULL DEFAULT 0,
    other_events BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (`date`, service, shard)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO daily_usage_by_service
    (`date`, service, sessions, page_visits, programs_run, program_errors, features_used,
     other_events)
SELECT day, service, SUM(sessions), SUM(page_visits), SUM(programs_run), SUM(program_errors),
       SUM(features_used), SUM(other_events)
FROM (
    SELECT DATE(start_time) AS day, service, COUNT(*) AS sessions, 0 AS page_visits,
           0 AS programs_run, 0 AS program_errors, 0 AS features_used, 0 AS other_events
    FROM ide_sessions GROUP BY DATE(start_time), service
    UNION ALL
    SELECT DATE(`timestamp`), service, 0, COUNT(*), 0, 0, 0, 0
    FROM page_visits GROUP BY DATE(`timestamp`), service
    UNION ALL
    SELECT DATE(`timestamp`), service, 0, 0, COUNT(*), SUM(CASE WHEN success THEN 0 ELSE 1 END),
           0, 0
    FROM program_executions GROUP BY DATE(`timestamp`), service
    UNION ALL
    SELECT DATE(`timestamp`), service, 0, 0, 0, 0, COUNT(*), 0
    FROM feature_usage GROUP BY DATE(`timestamp`), service
    UNION ALL
    SELECT DATE(`timestamp`), service, 0, 0, 0, 0, 0, COUNT(*)
    FROM usage_events GROUP BY DATE(`timestamp`), service
) AS raw
GROUP BY day, service
-- Re-runnable: a second run (after a failure further on) sets the same recount again.
ON DUPLICATE KEY UPDATE
    sessions = VALUES(sessions), page_visits = VALUES(page_visits),
    programs_run = VALUES(programs_run), program_errors = VALUES(program_errors),
    features_used = VALUES(features_used), other_events = VALUES(other_events);

CREATE OR REPLACE VIEW daily_usage_summary AS
SELECT `date`,
       SUM(sessions) AS sessions,
       SUM(page_visits) AS page_visits,
       SUM(programs_run) AS programs_run,
       SUM(program_errors) AS program_errors,
       SUM(features_used) AS features_used
FROM daily_usage_by_service
GROUP BY `date`;

-- Per session: page visits and feature uses counted like the run counters, so the session
-- summary reads one row per session instead of counting each session's events.
ALTER TABLE ide_sessions
    ADD COLUMN page_visits BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN features_used BIGINT NOT NULL DEFAULT 0;

UPDATE ide_sessions s SET
    page_visits = (SELECT COUNT(*) FROM page_visits p
                   WHERE p.session_id = s.session_id AND p.service = s.service),
    features_used = (SELECT COUNT(*) FROM feature_usage f
                     WHERE f.session_id = s.session_id AND f.service = s.service);

CREATE OR REPLACE VIEW session_summary AS
SELECT s.session_id, s.service, s.user_id, s.start_time, s.last_activity, s.end_time,
       s.duration_seconds, s.programs_run, s.lines_executed, s.errors_encountered,
       s.page_visits, s.features_used
FROM ide_sessions s;

-- The dashboard's top features read one service's feature uses of a time range.
ALTER TABLE feature_usage ADD KEY ix_feature_usage_service_time (service, `timestamp`);
