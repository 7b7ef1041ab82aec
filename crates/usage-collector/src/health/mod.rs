//! The collector's own health: metrics, readiness, and the admin HTTP endpoints.
//!
//! - [`metrics`]: every metric, declared once: name, help text, type and labels.
//! - [`series`]: the metric types, readable so `/metrics` and the OTLP push share one set of
//!   values.
//! - [`state`]: readiness checks (database, schema, writer) with the reason for each failure.
//! - [`window`]: what each service sent and what was written for it in the last minute.
//! - [`status`]: the body of `/status` (proto/admin.openapi.json), which
//!   `usage-collector status` reads.
//! - [`http`]: `/metrics`, `/health/live`, `/health/ready`, `/status` on the admin port.

pub mod http;
pub mod metrics;
pub mod series;
pub mod state;
pub mod status;
pub mod window;

pub use metrics::Metrics;
pub use state::{Check, Health, Readiness};
