-- Each event table is stored in the order of its unique key, (service, event_id), instead of
-- by an auto-increment `id` with the unique key as a second index beside it. InnoDB keeps a
-- table's rows in its primary key: with the key the writer looks rows up by as the primary
-- key, an insert writes one index fewer and checks uniqueness in the same descent, and the
-- ids the tracker sends (UUIDv7) and the ones the collector derives (time first) append at
-- the end of each service's range. `ide_sessions` likewise on (service, session_id): the
-- session upsert and the locking read find a session in one index, and an upsert that meets
-- an existing session no longer inserts (and then undoes) a row under a new `id` first.
--
-- Expand only: `id` stays, no longer a key, no longer filled (NULL in new rows; the rows
-- already there keep theirs), so collectors of releases 0.1.0 and 0.2.0, whose retention
-- sweeps order by (`timestamp`, id), keep writing and sweeping beside this release. A later
-- release drops it once no collector of those releases runs (a contract step; an instant
-- change on MariaDB 10.4+ and MySQL 8.0.29+).
--
-- Each statement rebuilds its table online (ALGORITHM=INPLACE, LOCK=NONE: writes go on while
-- it runs, and the server refuses the statement rather than block them). It needs free disk
-- for a copy of the table, and on a Galera cluster it runs in total order (every node stops
-- writing that table while it runs). Times measured are in docs/operations.md (Upgrading).
-- One statement per table: each applies whole or not at all.
ALTER TABLE page_visits
    MODIFY id BIGINT UNSIGNED NULL,
    DROP PRIMARY KEY,
    DROP INDEX uq_page_visits_service_event,
    ADD PRIMARY KEY (service, event_id),
    ALGORITHM = INPLACE, LOCK = NONE;

ALTER TABLE program_executions
    MODIFY id BIGINT UNSIGNED NULL,
    DROP PRIMARY KEY,
    DROP INDEX uq_program_executions_service_event,
    ADD PRIMARY KEY (service, event_id),
    ALGORITHM = INPLACE, LOCK = NONE;

ALTER TABLE feature_usage
    MODIFY id BIGINT UNSIGNED NULL,
    DROP PRIMARY KEY,
    DROP INDEX uq_feature_usage_service_event,
    ADD PRIMARY KEY (service, event_id),
    ALGORITHM = INPLACE, LOCK = NONE;

ALTER TABLE usage_events
    MODIFY id BIGINT UNSIGNED NULL,
    DROP PRIMARY KEY,
    DROP INDEX uq_usage_events_service_event,
    ADD PRIMARY KEY (service, event_id),
    ALGORITHM = INPLACE, LOCK = NONE;

ALTER TABLE ide_sessions
    MODIFY id BIGINT UNSIGNED NULL,
    DROP PRIMARY KEY,
    DROP INDEX uq_ide_sessions_service_session,
    ADD PRIMARY KEY (service, session_id),
    ALGORITHM = INPLACE, LOCK = NONE;

INSERT INTO schema_releases (version, oldest_release) VALUES (9, '0.1.0')
ON DUPLICATE KEY UPDATE oldest_release = VALUES(oldest_release);
