-- Rows the database refused for good, kept with the reason (see the MySQL edition).
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id BLOB NOT NULL,
    table_name VARCHAR(64) NOT NULL,
    reason VARCHAR(2048) NOT NULL,
    row_data TEXT NOT NULL,
    created_at DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_dead_letters_event ON dead_letters (event_id);
CREATE INDEX IF NOT EXISTS ix_dead_letters_created ON dead_letters (created_at);
