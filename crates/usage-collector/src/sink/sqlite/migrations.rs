//! The SQLite schema, embedded in the binary.

use sqlx::migrate::Migrator;

/// The migrator for every SQLite migration, in order.
pub fn migrator() -> Migrator {
    crate::sink::sql::migrator(&[
        (
            "usage tables",
            include_str!("../migrations/sqlite/0001_usage_tables.sql"),
        ),
        (
            "dead letters",
            include_str!("../migrations/sqlite/0002_dead_letters.sql"),
        ),
        (
            "collector heartbeats",
            include_str!("../migrations/sqlite/0003_collector_heartbeats.sql"),
        ),
        (
            "keys per service",
            include_str!("../migrations/sqlite/0004_keys_per_service.sql"),
        ),
        (
            "rollups",
            include_str!("../migrations/sqlite/0005_rollups.sql"),
        ),
        (
            "dead letters by service",
            include_str!("../migrations/sqlite/0007_dead_letters_by_service.sql"),
        ),
        (
            "collector leases",
            include_str!("../migrations/sqlite/0008_collector_leases.sql"),
        ),
    ])
}
