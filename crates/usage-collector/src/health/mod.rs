//! The collector's own health: metrics, readiness, and the admin HTTP endpoints.
//!
//! - [`metrics`]: every metric, declared once: name, help text, type and labels.
//! - [`series`]: the metric types, readable so `/metrics` and the OTLP push share one set of
//!   values.
//! - [`state`]: readiness checks (database, schema, writer) with the reason for each failure.
//! - [`http`]: `/metrics`, `/health/live`, `/health/ready` on the admin port.

pub mod http;
pub mod metrics;
pub mod series;
pub mod state;

pub use metrics::Metrics;
pub use state::{Check, Health, Readiness};
