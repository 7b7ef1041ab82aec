-- Leases for work one collector at a time does (see the MySQL edition). Times are text in
-- the form strftime('%Y-%m-%d %H:%M:%f') writes, so they compare in time order.
CREATE TABLE IF NOT EXISTS collector_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(255) NOT NULL DEFAULT '',
    expires_at DATETIME NOT NULL
);

INSERT INTO collector_leases (name, holder, expires_at)
VALUES ('retention', '', '1970-01-01 00:00:00.000')
ON CONFLICT (name) DO NOTHING;

INSERT INTO schema_releases (version, oldest_release) VALUES (7, '0.1.0')
ON CONFLICT (version) DO UPDATE SET oldest_release = excluded.oldest_release;
