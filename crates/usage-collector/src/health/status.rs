//! The body of `GET /status` on the admin port: what one collector is doing, at a glance. The
//! contract is `proto/admin.openapi.json`; `usage-collector status` reads it (as a table, or as
//! the JSON itself with `--json`).
//!
//! These are the types only: the collector's stages fill them in (`crate::ops::status`), and
//! the admin server asks its [`StatusSource`] for a fresh one on each request.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::window::ServiceMinute;

/// Builds a fresh [`Status`] (the admin server calls it per request).
pub type StatusSource = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Status> + Send>> + Send + Sync>;

/// What one collector is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The collector's version.
    pub version: String,
    /// Its name (`--instance`).
    pub instance: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// The database schema.
    pub schema: SchemaStatus,
    /// The tracking plan in force.
    pub plan: PlanStatus,
    /// `/health/ready`'s answer.
    pub readiness: ReadinessStatus,
    /// What waits in the spool.
    pub spool: SpoolStatus,
    /// The writer.
    pub writer: WriterStatus,
    /// Rows the database refused for good.
    pub dead_letters: DeadLetterStatus,
    /// Per service, what it sent and what was written in the last minute.
    pub services: Vec<ServiceMinute>,
}

/// The database schema as the collector sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaStatus {
    /// The highest migration applied (`null` when it cannot be read, or SQLite before any).
    pub version: Option<i64>,
    /// The highest migration this collector has.
    pub expected_version: i64,
    /// Which collector releases can write beside each other on this schema.
    pub serves: String,
    /// Why the version could not be read, if it could not.
    pub error: Option<String>,
}

/// The tracking plan in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStatus {
    /// Its file (`null`: the built-in plan).
    pub file: Option<String>,
    /// Events it declares.
    pub events: usize,
    /// Tables written.
    pub tables: usize,
}

/// `/health/ready`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessStatus {
    /// `ok`, `degraded` or `failing`.
    pub status: String,
    /// Each check's state, with the reason when it is not `ok`.
    pub checks: BTreeMap<String, String>,
}

/// What waits in the spool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// Requests not yet in the database.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The spool's cap.
    pub capacity_bytes: u64,
    /// Seconds since the oldest of them was received (`null`: the spool is empty).
    pub oldest_age_seconds: Option<f64>,
}

/// The writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    /// `ok`, or what is failing.
    pub state: String,
    /// When a batch was last written, in seconds since the Unix epoch (`null`: never).
    pub last_write_unix_seconds: Option<f64>,
    /// Seconds since then.
    pub last_write_age_seconds: Option<f64>,
}

/// Rows the database refused for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterStatus {
    /// How many there are (`null` when they cannot be counted).
    pub total: Option<u64>,
    /// By reason (`row_value`, `not_in_catalogue`, …).
    pub by_reason: BTreeMap<String, u64>,
    /// Why they could not be counted, if they could not.
    pub error: Option<String>,
}
