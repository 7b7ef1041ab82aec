//! The MySQL schema, embedded in the binary.

use sqlx::migrate::Migrator;

/// The migrator for every MySQL migration, in order.
pub fn migrator() -> Migrator {
    crate::sink::sql::migrator(&[
        (
            "usage tables",
            include_str!("../migrations/mysql/0001_usage_tables.sql"),
        ),
        (
            "dead letters",
            include_str!("../migrations/mysql/0002_dead_letters.sql"),
        ),
        (
            "collector heartbeats",
            include_str!("../migrations/mysql/0003_collector_heartbeats.sql"),
        ),
        (
            "keys per service",
            include_str!("../migrations/mysql/0004_keys_per_service.sql"),
        ),
        (
            "rollups",
            include_str!("../migrations/mysql/0005_rollups.sql"),
        ),
        (
            "session keys compared byte for byte",
            include_str!("../migrations/mysql/0006_session_keys_binary.sql"),
        ),
        (
            "dead letters by service",
            include_str!("../migrations/mysql/0008_dead_letters_by_service.sql"),
        ),
        (
            "collector leases",
            include_str!("../migrations/mysql/0009_collector_leases.sql"),
        ),
    ])
}
