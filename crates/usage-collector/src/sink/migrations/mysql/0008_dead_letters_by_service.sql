-- Dead letters belong to the service that sent the event, as event rows do: the key is
-- (service, event_id), so one service's refused event never hides another's. Each keeps a
-- short reason class (`row_value`, `not_in_catalogue`, …) beside the database's text, for
-- `usage-collector dead-letters list` and `replay --reason`. Rows kept by an earlier release
-- get their service from the row they hold.
--
-- Expand only: a collector of release 0.1.0 keeps inserting dead letters beside this release
-- (its rows get the defaults), so both run side by side during a rolling upgrade.
ALTER TABLE dead_letters
    ADD COLUMN service VARCHAR(128) NOT NULL DEFAULT '' AFTER event_id,
    ADD COLUMN reason_class VARCHAR(32) NOT NULL DEFAULT 'unknown' AFTER table_name;

UPDATE dead_letters
SET service = COALESCE(JSON_UNQUOTE(JSON_EXTRACT(row_data, '$.columns.service')), ''),
    reason_class = CASE WHEN reason LIKE 'table `%` is not in this collector%'
                        THEN 'not_in_catalogue' ELSE 'unknown' END;

ALTER TABLE dead_letters
    DROP INDEX uq_dead_letters_event,
    ADD UNIQUE KEY uq_dead_letters_service_event (service, event_id),
    ADD KEY ix_dead_letters_reason (reason_class, created_at);

-- Which collector releases a schema serves: each migration from now on records the oldest
-- release that writes correctly beside it, so any collector (and `usage-collector check`) can
-- tell which releases may run on this schema during a rolling upgrade.
CREATE TABLE IF NOT EXISTS schema_releases (
    version BIGINT NOT NULL PRIMARY KEY,
    oldest_release VARCHAR(32) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO schema_releases (version, oldest_release) VALUES
    (1, '0.1.0'), (2, '0.1.0'), (3, '0.1.0'), (4, '0.1.0'), (5, '0.1.0'), (6, '0.1.0'),
    (7, '0.1.0'), (8, '0.1.0')
ON DUPLICATE KEY UPDATE oldest_release = VALUES(oldest_release);
