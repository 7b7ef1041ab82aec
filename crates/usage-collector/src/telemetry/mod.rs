//! The collector's own telemetry over OTLP, so it lands wherever the apps' telemetry goes
//! (Jaeger, Tempo, an OpenTelemetry Collector).
//!
//! - [`traces`]: its spans (one per batch write) through `tracing-opentelemetry`.
//! - [`metrics`]: its metrics, pushed periodically: the same values as `/metrics`.
//! - [`settings`]: where each signal goes (its endpoint, or none), as the OpenTelemetry SDKs'
//!   variables say.
//!
//! Loop guard: everything is sent under the instrumentation scope
//! [`crate::event::SELF_SCOPE`], which the receiver refuses.

pub mod metrics;
pub mod settings;
pub mod traces;

/// `service.name` of the collector's own telemetry.
pub const SERVICE: &str = "usage-collector";
