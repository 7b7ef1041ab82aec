-- Leases for work one collector at a time does (the retention sweep), on any MySQL-compatible
-- engine: a row per lease, taken by one conditional UPDATE when it has expired (or is already
-- the taker's), renewed while the work goes on, and released by setting its expiry in the
-- past. Unlike GET_LOCK, a row is replicated: collectors on different nodes of a Galera
-- cluster (or behind Vitess or TiDB) see the same lease. The database's clock decides expiry.
--
-- Expand only: a collector of release 0.1.0 or 0.2.0 keeps writing beside this release (its
-- retention sweeps take GET_LOCK instead, and do not exclude this release's: a row past its
-- retention is still deleted once, by one or the other).
CREATE TABLE IF NOT EXISTS collector_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL DEFAULT '',
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Seeded expired; a second run of this migration (after a failure halfway) leaves it as it is.
INSERT INTO collector_leases (name, holder, expires_at)
VALUES ('retention', '', '1970-01-01 00:00:00')
ON DUPLICATE KEY UPDATE name = name;

INSERT INTO schema_releases (version, oldest_release) VALUES (8, '0.1.0')
ON DUPLICATE KEY UPDATE oldest_release = VALUES(oldest_release);
