-- Rows the database refused for good (for example a number out of its column's range), kept
-- with the reason so that nothing accepted is lost silently and the row can be repaired.
CREATE TABLE IF NOT EXISTS dead_letters (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id BINARY(16) NOT NULL,
    table_name VARCHAR(64) NOT NULL,
    reason VARCHAR(2048) NOT NULL,
    row_data JSON NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_dead_letters_event (event_id),
    KEY ix_dead_letters_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
