//! The SQLite schema, embedded in the binary.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// The migrator for every SQLite migration, in order.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "usage tables".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0001_usage_tables.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "dead letters".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0002_dead_letters.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "collector heartbeats".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0003_collector_heartbeats.sql").into_sql_str(),
            false,
        ),
    ])
}
