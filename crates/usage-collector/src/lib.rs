//! The usage collector: receives usage events over OTLP/gRPC and writes them as MySQL (or
//! SQLite) rows, exactly once, reporting its own health as metrics and logs.
//!
//! # Layout
//!
//! Data flows one way, one module per stage:
//!
//! - [`receiver`]: OTLP/gRPC logs and traces services — gzip, size limit, partial success.
//! - [`event`]: one usage event decoded from a log record or span: name, id, time, service.
//! - [`catalog`]: which event goes to which table and column; type checks; text cut to fit.
//! - [`spool`]: the durable write-ahead log an accepted request is `fsync`ed to before OK.
//! - [`writer`]: tails the spool — rows written in batched transactions, checkpoint after commit.
//! - [`sink`]: MySQL and SQLite — migrations, startup verification, idempotent batch writes.
//! - [`health`]: metrics, readiness checks, and the admin HTTP endpoints.
//! - [`config`]: settings from file, environment and flags; secrets never printed.
//! - [`app`]: builds the stages from settings, runs them, stops them in order.
//! - [`cli`]: the `usage-collector` command line (`serve`, `check`, `migrate`).

pub mod app;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod event;
pub mod health;
pub mod net;
pub mod receiver;
pub mod sink;
pub mod spool;
pub mod telemetry;
pub mod writer;

pub use app::Application;
pub use config::Settings;
/// The allocator the `usage-collector` binary runs with (decoding and mapping allocate many
/// small strings per record; glibc's allocator took about a third of the receiver's CPU).
pub use mimalloc::MiMalloc;
