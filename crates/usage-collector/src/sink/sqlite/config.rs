//! SQLite connection options from the settings.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::config::DatabaseSettings;
use crate::sink::handle::{OpenError, Target};

/// A lazily connecting pool for `url` (the file is created when missing).
pub fn pool(settings: &DatabaseSettings, url: &str) -> Result<(SqlitePool, Target), OpenError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| OpenError::Url {
            message: e.to_string(),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(settings.connect_timeout);
    let target = Target {
        backend: "sqlite",
        host: String::new(),
        port: None,
        database: options.get_filename().display().to_string(),
        user: None,
        tls: None,
        more_hosts: Vec::new(),
    };
    let pool = SqlitePoolOptions::new()
        // SQLite has one writer at a time; more connections would only wait on its lock.
        .max_connections(1)
        .acquire_timeout(settings.connect_timeout)
        .connect_lazy_with(options);
    Ok((pool, target))
}
