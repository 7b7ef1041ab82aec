-- Dead letters keyed by (service, event_id), with a reason class (see the MySQL edition), and
-- the releases each migration serves.
ALTER TABLE dead_letters ADD COLUMN service VARCHAR(128) NOT NULL DEFAULT '';
ALTER TABLE dead_letters ADD COLUMN reason_class VARCHAR(32) NOT NULL DEFAULT 'unknown';
UPDATE dead_letters
SET service = COALESCE(json_extract(row_data, '$.columns.service'), ''),
    reason_class = CASE WHEN reason LIKE 'table `%` is not in this collector%'
                        THEN 'not_in_catalogue' ELSE 'unknown' END;
DROP INDEX IF EXISTS uq_dead_letters_event;
CREATE UNIQUE INDEX IF NOT EXISTS uq_dead_letters_service_event ON dead_letters (service, event_id);
CREATE INDEX IF NOT EXISTS ix_dead_letters_reason ON dead_letters (reason_class, created_at);

CREATE TABLE IF NOT EXISTS schema_releases (
    version BIGINT NOT NULL PRIMARY KEY,
    oldest_release VARCHAR(32) NOT NULL
);
INSERT INTO schema_releases (version, oldest_release) VALUES
    (1, '0.1.0'), (2, '0.1.0'), (3, '0.1.0'), (4, '0.1.0'), (5, '0.1.0'), (6, '0.1.0'),
    (7, '0.1.0')
ON CONFLICT (version) DO UPDATE SET oldest_release = excluded.oldest_release;
