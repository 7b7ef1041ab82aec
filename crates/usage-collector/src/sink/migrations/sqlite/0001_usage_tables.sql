-- The usage tables (embedded SQLite edition), with the column names the web IDE's queries already use.
-- Every event row carries its event id under a unique key: writing an event twice is a no-op.
-- No foreign keys: an event never depends on another event having arrived first.

CREATE TABLE IF NOT EXISTS page_visits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    service VARCHAR(128) NOT NULL,
    session_id VARCHAR(128) NULL,
    user_id VARCHAR(128) NULL,
    `timestamp` DATETIME NOT NULL,
    page_path VARCHAR(1024) NOT NULL,
    referrer VARCHAR(1024) NULL,
    user_agent VARCHAR(512) NULL,
    ip_address VARCHAR(64) NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_page_visits_event ON page_visits (event_id);
CREATE INDEX IF NOT EXISTS ix_page_visits_time ON page_visits (`timestamp`);
CREATE INDEX IF NOT EXISTS ix_page_visits_session ON page_visits (session_id);

CREATE TABLE IF NOT EXISTS ide_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id VARCHAR(128) NOT NULL,
    service VARCHAR(128) NOT NULL,
    user_id VARCHAR(128) NULL,
    start_time DATETIME NOT NULL,
    last_activity DATETIME NOT NULL,
    end_time DATETIME NULL,
    duration_seconds BIGINT NULL,
    user_agent VARCHAR(512) NULL,
    ip_address VARCHAR(64) NULL,
    programs_run INT NOT NULL DEFAULT 0,
    lines_executed BIGINT NOT NULL DEFAULT 0,
    errors_encountered INT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_ide_sessions_session ON ide_sessions (session_id);
CREATE INDEX IF NOT EXISTS ix_ide_sessions_start ON ide_sessions (start_time);

CREATE TABLE IF NOT EXISTS program_executions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    service VARCHAR(128) NOT NULL,
    session_id VARCHAR(128) NULL,
    user_id VARCHAR(128) NULL,
    `timestamp` DATETIME NOT NULL,
    program_lines INT NULL,
    lines_executed BIGINT NULL,
    execution_time_ms BIGINT NULL,
    success BOOLEAN NOT NULL DEFAULT TRUE,
    error_message VARCHAR(2048) NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_program_executions_event ON program_executions (event_id);
CREATE INDEX IF NOT EXISTS ix_program_executions_time ON program_executions (`timestamp`);
CREATE INDEX IF NOT EXISTS ix_program_executions_session ON program_executions (session_id);

CREATE TABLE IF NOT EXISTS feature_usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    service VARCHAR(128) NOT NULL,
    session_id VARCHAR(128) NULL,
    user_id VARCHAR(128) NULL,
    `timestamp` DATETIME NOT NULL,
    feature_name VARCHAR(255) NOT NULL,
    feature_data TEXT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_feature_usage_event ON feature_usage (event_id);
CREATE INDEX IF NOT EXISTS ix_feature_usage_name_time ON feature_usage (feature_name, `timestamp`);
CREATE INDEX IF NOT EXISTS ix_feature_usage_session ON feature_usage (session_id);

CREATE TABLE IF NOT EXISTS usage_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    service VARCHAR(128) NOT NULL,
    session_id VARCHAR(128) NULL,
    user_id VARCHAR(128) NULL,
    `timestamp` DATETIME NOT NULL,
    event_name VARCHAR(128) NOT NULL,
    trace_id VARCHAR(32) NULL,
    span_id VARCHAR(16) NULL,
    duration_ms BIGINT NULL,
    attributes TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_usage_events_event ON usage_events (event_id);
CREATE INDEX IF NOT EXISTS ix_usage_events_name_time ON usage_events (event_name, `timestamp`);
CREATE INDEX IF NOT EXISTS ix_usage_events_session ON usage_events (session_id);

CREATE VIEW IF NOT EXISTS daily_usage_summary AS
SELECT day AS `date`,
       SUM(sessions) AS sessions,
       SUM(page_visits) AS page_visits,
       SUM(programs_run) AS programs_run,
       SUM(program_errors) AS program_errors,
       SUM(features_used) AS features_used
FROM (
    SELECT DATE(start_time) AS day, COUNT(*) AS sessions, 0 AS page_visits, 0 AS programs_run,
           0 AS program_errors, 0 AS features_used
    FROM ide_sessions GROUP BY DATE(start_time)
    UNION ALL
    SELECT DATE(`timestamp`), 0, COUNT(*), 0, 0, 0 FROM page_visits GROUP BY DATE(`timestamp`)
    UNION ALL
    SELECT DATE(`timestamp`), 0, 0, COUNT(*), SUM(CASE WHEN success THEN 0 ELSE 1 END), 0
    FROM program_executions GROUP BY DATE(`timestamp`)
    UNION ALL
    SELECT DATE(`timestamp`), 0, 0, 0, 0, COUNT(*) FROM feature_usage GROUP BY DATE(`timestamp`)
) AS daily
GROUP BY day;

CREATE VIEW IF NOT EXISTS session_summary AS
SELECT s.session_id, s.service, s.user_id, s.start_time, s.last_activity, s.end_time,
       s.duration_seconds, s.programs_run, s.lines_executed, s.errors_encountered,
       (SELECT COUNT(*) FROM page_visits p WHERE p.session_id = s.session_id) AS page_visits,
       (SELECT COUNT(*) FROM feature_usage f WHERE f.session_id = s.session_id) AS features_used
FROM ide_sessions s;
