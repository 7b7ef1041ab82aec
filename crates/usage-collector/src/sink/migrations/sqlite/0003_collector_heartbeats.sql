-- One row per collector, moved forward by each heartbeat (see the MySQL edition).
CREATE TABLE IF NOT EXISTS collector_heartbeats (
    instance VARCHAR(128) NOT NULL PRIMARY KEY,
    last_beat DATETIME NOT NULL
);
