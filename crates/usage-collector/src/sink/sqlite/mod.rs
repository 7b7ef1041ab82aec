//! SQLite: the embedded default, so the collector runs with nothing else installed.
//!
//! - [`config`]: connection options from the settings (file created when missing, WAL).
//! - [`migrations`]: the embedded schema migrations.

pub mod config;
pub mod migrations;
