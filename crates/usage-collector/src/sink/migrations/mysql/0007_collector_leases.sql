-- Leases for work one collector at a time does (the retention sweep), on any MySQL-compatible
-- engine: a row per lease, taken by one conditional UPDATE when it has expired (or is already
-- the taker's), renewed while the work goes on, and released by setting its expiry in the
-- past. Unlike GET_LOCK, a row is replicated: collectors on different nodes of a Galera
-- cluster (or behind Vitess or TiDB) see the same lease. The database's clock decides expiry.
CREATE TABLE IF NOT EXISTS collector_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL DEFAULT '',
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO collector_leases (name, holder, expires_at)
VALUES ('retention', '', '1970-01-01 00:00:00');
