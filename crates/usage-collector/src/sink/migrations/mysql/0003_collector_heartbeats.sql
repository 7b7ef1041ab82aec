-- One row per collector, moved forward by a heartbeat that travels the whole write path
-- (spool, writer, database) every interval: its age proves the path works end to end.
CREATE TABLE IF NOT EXISTS collector_heartbeats (
    instance VARCHAR(128) NOT NULL PRIMARY KEY,
    last_beat DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
