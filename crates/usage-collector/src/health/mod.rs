//! The collector's own health: metrics, readiness, and the admin HTTP endpoints.
//!
//! - [`metrics`]: the one list of metric names and the typed handles that count.
//! - [`state`]: readiness checks (database, schema, writer) with the reason for each failure.
//! - [`http`]: `/metrics`, `/health/live`, `/health/ready` on the admin port.

pub mod http;
pub mod metrics;
pub mod state;

pub use metrics::Metrics;
pub use state::{Check, Health, Readiness};
