//! Test harness for the end-to-end tests: a fresh database per test, a collector on port 0,
//! and one place that builds OTLP requests.
//!
//! # Layout
//!
//! - [`db`]: creates a uniquely named MariaDB database (dropped afterwards) or a temporary
//!   SQLite file, and reads rows back as text for column-by-column assertions.
//! - [`collector`]: starts an in-process collector against a database, waits until it is ready.
//! - [`clients`]: real OpenTelemetry clients (Python, Node.js, a browser page in headless
//!   Chromium) run as child processes, a static page server giving the page its origin, and a
//!   client's web IDE session read back from the tables column by column.
//! - [`fixtures`]: OTLP log records, spans and requests, and clients that send them.
//! - [`otlp_http`]: an OTLP/HTTP client (protobuf or JSON, gzip), and [`otlp_http::Transport`]
//!   to send the same request over gRPC or HTTP.
//! - [`galera`]: a real three-node MariaDB Galera cluster on loopback ports (started, faulted
//!   — SIGKILL, restart by IST, isolation from the primary component — and removed), for the
//!   cluster tests.
//! - [`proxy`]: a TCP proxy in front of MariaDB that a test can cut and restore.
//! - [`peers`]: an OpenTelemetry Collector with the recommended configuration (or another, for
//!   the bench) and Jaeger v2, as child processes on loopback ports (built by
//!   `scripts/peers-setup`), the collector's own metrics and log, and Jaeger's traces read back.
//! - [`process`]: the real `usage-collector` command as a child process (kill, SIGTERM).
//! - [`service`]: a server a test starts (Prometheus, an OpenTelemetry Collector, Jaeger, a
//!   database node) with its own log; a failure to come up quotes that log.
//! - [`poll`]: waits for a condition under a deadline, instead of sleeping for a guessed time.
//! - [`exposition`]: numbers read back from a collector's `/metrics`, and the accounting of
//!   accepted records.
//! - [`summaries`]: the daily rollup and session counters against a recount from the raw rows.
//! - [`load`]: concurrent OTLP clients that retry like the SDKs and record what was acknowledged.
//! - [`measure`]: a process's CPU time and peak memory, the machine, the slowest liveness answer.
//! - [`naive`]: the database server's CPU time and idleness, and the naive client the benches
//!   compare the collector with (1000-row INSERTs).
//! - [`loadgen`]: the load generator's engine (`usage-load`, the pipeline bench) and its
//!   records' attributes (the sink bench).
//!
//! MariaDB is reached at `USAGE_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`).

pub mod clients;
pub mod collector;
pub mod db;
pub mod exposition;
pub mod fixtures;
pub mod galera;
pub mod load;
pub mod loadgen;
pub mod measure;
pub mod naive;
pub mod otlp_http;
pub mod peers;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod service;
pub mod summaries;
