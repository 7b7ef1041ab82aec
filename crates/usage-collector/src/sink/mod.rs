//! Writing rows to a database: MySQL (production) and SQLite (the embedded default).
//!
//! - [`handle`]: [`Sink`], the one type the rest of the collector uses: connect, migrate,
//!   verify, write a batch.
//! - [`sql`]: the SQL both databases share, generic over the driver, and the order a batch is
//!   written in.
//! - [`expand`]: the tables and columns a tracking plan declares, created or widened by
//!   `migrate` (expand only: a change that would lose data is refused, naming it).
//! - [`admin`]: the operator's commands' statements: the schema's releases, dead letters
//!   counted, read and written again.
//! - [`rebuild`]: the daily rollup and session counters recomputed from the raw rows for a
//!   range of days, while collectors write.
//! - [`migrate_lease`]: one migration run at a time on any node, by a lease row.
//! - [`compat`]: which collector releases a schema serves (rolling upgrades).
//! - [`verify`]: startup verification — connect, test query, server facts, schema, write
//!   permission — each step named in its error.
//! - [`cluster`]: what the sink knows of a database cluster (Galera facts, write-set limits)
//!   and moving to the next host of a URL naming several when the node in use leaves.
//! - [`error`]: database errors described by what happened (connection, timeout, a row's
//!   value, …), with secrets redacted; what to do about each is the writer's retry policy.
//! - [`retention`]: deleting rows past their retention in bounded batches, one collector at a
//!   time.
//! - [`blackhole`]: a sink that stores nothing, for measuring the receive path alone.
//! - [`mysql`], [`sqlite`]: each backend's connection options and migrations.

pub mod admin;
pub mod blackhole;
pub mod cluster;
pub mod compat;
pub mod error;
pub mod expand;
pub mod handle;
pub mod migrate_lease;
pub mod mysql;
pub mod rebuild;
pub mod retention;
pub mod sql;
pub mod sqlite;
pub mod verify;

pub use error::{ErrorKind, Redactor, SinkError};
pub use handle::{Sink, Target};
pub use sql::Written;
pub use verify::{Step, VerifyError};
