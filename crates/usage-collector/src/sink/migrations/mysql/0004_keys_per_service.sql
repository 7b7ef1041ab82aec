-- An event id and a session belong to the service that wrote them: the unique keys include the
-- service, so one service writing another's event or session id creates its own row and
-- cannot make the other's be skipped, changed or counted. Existing rows and column names are
-- kept; only the keys change.
ALTER TABLE page_visits DROP INDEX uq_page_visits_event,
    ADD UNIQUE KEY uq_page_visits_service_event (service, event_id);
ALTER TABLE program_executions DROP INDEX uq_program_executions_event,
    ADD UNIQUE KEY uq_program_executions_service_event (service, event_id),
    ADD KEY ix_program_executions_service_session (service, session_id);
ALTER TABLE feature_usage DROP INDEX uq_feature_usage_event,
    ADD UNIQUE KEY uq_feature_usage_service_event (service, event_id);
ALTER TABLE usage_events DROP INDEX uq_usage_events_event,
    ADD UNIQUE KEY uq_usage_events_service_event (service, event_id);
ALTER TABLE ide_sessions DROP INDEX uq_ide_sessions_session,
    ADD UNIQUE KEY uq_ide_sessions_service_session (service, session_id);

CREATE OR REPLACE VIEW session_summary AS
SELECT s.session_id, s.service, s.user_id, s.start_time, s.last_activity, s.end_time,
       s.duration_seconds, s.programs_run, s.lines_executed, s.errors_encountered,
       (SELECT COUNT(*) FROM page_visits p
        WHERE p.session_id = s.session_id AND p.service = s.service) AS page_visits,
       (SELECT COUNT(*) FROM feature_usage f
        WHERE f.session_id = s.session_id AND f.service = s.service) AS features_used
FROM ide_sessions s;
