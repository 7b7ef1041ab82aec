-- An event id and a session belong to the service that wrote them: the unique keys include the
-- service, so one service writing another's event or session id creates its own row and
-- cannot make the other's be skipped, changed or counted. Existing rows and column names are
-- kept; only the keys change.
DROP INDEX IF EXISTS uq_page_visits_event;
CREATE UNIQUE INDEX uq_page_visits_service_event ON page_visits (service, event_id);
DROP INDEX IF EXISTS uq_program_executions_event;
CREATE UNIQUE INDEX uq_program_executions_service_event ON program_executions (service, event_id);
CREATE INDEX ix_program_executions_service_session ON program_executions (service, session_id);
DROP INDEX IF EXISTS uq_feature_usage_event;
CREATE UNIQUE INDEX uq_feature_usage_service_event ON feature_usage (service, event_id);
DROP INDEX IF EXISTS uq_usage_events_event;
CREATE UNIQUE INDEX uq_usage_events_service_event ON usage_events (service, event_id);
DROP INDEX IF EXISTS uq_ide_sessions_session;
CREATE UNIQUE INDEX uq_ide_sessions_service_session ON ide_sessions (service, session_id);

DROP VIEW IF EXISTS session_summary;
CREATE VIEW session_summary AS
SELECT s.session_id, s.service, s.user_id, s.start_time, s.last_activity, s.end_time,
       s.duration_seconds, s.programs_run, s.lines_executed, s.errors_encountered,
       (SELECT COUNT(*) FROM page_visits p
        WHERE p.session_id = s.session_id AND p.service = s.service) AS page_visits,
       (SELECT COUNT(*) FROM feature_usage f
        WHERE f.session_id = s.session_id AND f.service = s.service) AS features_used
FROM ide_sessions s;
