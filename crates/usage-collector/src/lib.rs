//! The usage collector: receives usage events over OTLP (gRPC, or HTTP with protobuf or JSON)
//! and writes them as MySQL (or SQLite) rows, exactly once, reporting its own health as metrics and logs.
//!
//! # Layout
//!
//! Data flows one way, one module per stage; each stage uses only the stages below it
//! (`receiver` → `catalog`/`event`, `spool`; `writer` → `spool`, `sink`, `catalog`), and every
//! stage reports to `health`, which uses none of them:
//!
//! - [`receiver`]: OTLP logs and traces over gRPC and over HTTP (protobuf or JSON, gzip, CORS),
//!   one ingest path for both — admission before decoding (size, records, per-record limits,
//!   memory budget, spool headroom), decoding on its own threads, partial success, the answer
//!   once the spool has the request.
//! - [`event`]: one usage event decoded from a log record or span: name, id, time, service;
//!   [`event::wire`] reads the records in place from the request's protobuf bytes.
//! - [`catalog`]: which event goes to which table and column; type and range checks; text cut
//!   to fit; a whole request converted.
//! - [`spool`]: the durable write-ahead log an accepted request is `fsync`ed to before OK, and
//!   the cache of mapped rows that spares the writer decoding them again.
//! - [`writer`]: tails the spool — batches (cut to a cluster's write-set limits), one send
//!   under a timeout, the retry policy, dead letters, the checkpoint after commit; supervised.
//! - [`sink`]: MySQL and SQLite (and a blackhole for benchmarks) — migrations, startup
//!   verification, idempotent batch writes, what a failure was; on a Galera cluster, moving
//!   to the next host of the URL when the node in use fails.
//! - [`reload`]: the tracking plan read again on SIGHUP or when its file changes, put in force
//!   once its tables are there.
//! - [`retention`]: the sweeper that deletes rows past their retention, once verification has
//!   passed and then every interval, one collector at a time (a lease row).
//! - [`health`]: metrics (each declared once), readiness checks, and the admin HTTP endpoints.
//! - [`telemetry`]: the collector's own spans and metrics over OTLP.
//! - [`net`]: accepting connections (OTLP/gRPC, OTLP/HTTP, admin) so that a silent one is
//!   closed; [`net::tls`]: TLS on any listener, from PEM files read again when they change,
//!   handshakes off the accept loop.
//! - [`backoff`]: the one backoff schedule every retry loop uses.
//! - [`config`]: settings, each declared once, from file, environment and flags.
//! - [`app`]: builds the stages from settings, runs them, stops them in order.
//! - [`allocator`]: the allocator's setting (freed memory returned at once), applied as the
//!   binary starts.
//! - [`ops`]: the operator's commands: `status`, `dead-letters list|replay`,
//!   `rollups rebuild`.
//! - [`cli`]: the `usage-collector` command line (`serve`, `check`, `migrate`, and the
//!   operator's commands).

pub mod allocator;
pub mod app;
pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod event;
pub mod health;
pub mod net;
pub mod ops;
pub mod receiver;
pub mod reload;
pub mod retention;
pub mod sink;
pub mod spool;
pub mod telemetry;
pub mod writer;

pub use app::Application;
pub use config::Settings;
/// The allocator the `usage-collector` binary runs with (decoding and mapping allocate many
/// small strings per record; glibc's allocator took about a third of the receiver's CPU).
pub use mimalloc::MiMalloc;
