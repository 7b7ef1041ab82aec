//! The collector's own health: metrics, readiness, and the admin HTTP endpoints.
//!
//! - [`metrics`]: the one list of metric names and the typed handles that count.
//! - [`state`]: readiness checks (database, schema, writer) with the reason for each failure.
//! - [`http`]: `/metrics`, `/health/live`, `/health/ready` on the admin port.
//! - [`otlp`]: the collector's own spans and metrics, sent over OTLP when an endpoint is set.

pub mod http;
pub mod metrics;
pub mod otlp;
pub mod state;

pub use metrics::Metrics;
pub use state::{Check, Health, Readiness};
