//! Usage tracking for applications: record usage events with ordinary `tracing` macros and ship
//! them over OTLP to the usage collector, without ever blocking the application, and without a
//! failure going unnoticed.
//!
//! ```no_run
//! let tracker = usage_tracker::init()?; // OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, …
//! usage_tracker::page_visit(usage_tracker::PageVisit {
//!     session_id: Some("s-1"),
//!     ..usage_tracker::PageVisit::new("/ide")
//! });
//! println!("{:?} {:?}", tracker.stats(), tracker.health());
//! # Ok::<(), usage_tracker::InitError>(())
//! ```
//!
//! # Tokens and TLS
//!
//! The tracker sends `authorization: Bearer <token>` with every export request when given a
//! token, with [`TrackerBuilder::bearer_token`] or the standard
//! `OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<token>`. An `https://` endpoint uses TLS
//! (rustls with ring): the collector's certificate must chain to the system's trusted roots, or
//! to the CA certificates in the file given with [`TrackerBuilder::tls_ca_file`] or
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (the signal's own `OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE` /
//! `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` wins). A collector that asks for client certificates
//! gets the one from [`TrackerBuilder::tls_client_identity`] or
//! `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY`. A file that
//! cannot be read or holds no certificate (or key) is a [`StartError::Tls`] naming it.
//!
//! ```no_run
//! let tracker = usage_tracker::TrackerBuilder::new()
//!     .endpoint("https://usage-collector.usage:4317")
//!     .tls_ca_file("/etc/usage-ca/ca.crt")
//!     .bearer_token("3f9cb2…e1")
//!     .service_name("web-ide")
//!     .start()?;
//! # drop(tracker);
//! # Ok::<(), usage_tracker::InitError>(())
//! ```
//!
//! # Layout
//!
//! - [`catalog`]: the built-in usage events, their attribute keys and types, and the table and
//!   column each one is written to. The collector derives its mapping from this module, so an app
//!   and the collector can never disagree about a key.
//! - [`record`]: the helpers that record catalogue events, the [`event!`] macro for custom
//!   events, and [`ProgramRun`], a program run recorded as a span.
//! - [`config`]: settings from the standard OpenTelemetry environment variables or from code.
//! - [`tracker`]: [`Tracker`] — the `tracing` layer, `stats()`, `health()`, flush and shutdown;
//!   [`init`] for the one-call setup.
//! - `pipeline`: the bounded queue and the background export thread; events missing a value
//!   the collector requires are refused there.
//! - [`health`]: the counters and health states, and when to warn.
//! - [`warning`]: the tracker's warnings and where they go (stderr, or the application's
//!   handler).
//!
//! Everything but [`catalog`] is behind the default `exporter` feature.

pub mod catalog;
#[cfg(feature = "exporter")]
pub mod config;
#[cfg(feature = "exporter")]
pub mod health;
#[cfg(feature = "exporter")]
mod pipeline;
#[cfg(feature = "exporter")]
pub mod record;
#[cfg(feature = "exporter")]
pub mod tracker;
#[cfg(feature = "exporter")]
pub mod warning;

#[cfg(feature = "exporter")]
pub use config::Config;
#[cfg(feature = "exporter")]
pub use health::{Health, Stats};
#[cfg(feature = "exporter")]
pub use pipeline::{StartError, VerifyError};
#[cfg(feature = "exporter")]
pub use record::{
    AttributeValue, Event, EventId, FeatureUse, PageVisit, ProgramExecution, ProgramRun,
    RecordError, SessionStart, TARGET, feature_use, page_visit, program_execution, session_end,
    session_start,
};
#[cfg(feature = "exporter")]
pub use tracker::{InitError, Tracker, TrackerBuilder, init};
#[cfg(feature = "exporter")]
pub use warning::{Warning, WarningKind};

/// Re-exported for the [`event!`] macro.
#[cfg(feature = "exporter")]
#[doc(hidden)]
pub use tracing;
