//! MySQL (and MariaDB, TiDB, Vitess): the production database.
//!
//! - [`config`]: connection options from the settings: URL, password, TLS mode, pool.
//! - [`migrations`]: the embedded schema migrations.

pub mod config;
pub mod migrations;
