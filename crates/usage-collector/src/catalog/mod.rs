//! Which event goes to which table and column.
//!
//! - [`tables`]: the tables and columns the collector writes, derived from the tracking plan
//!   (`usage_tracker::catalog::plan`), with their SQL-independent types.
//! - [`settings`]: which plan, what becomes of records that are not usage events, and what is
//!   kept of client addresses.
//! - [`current`]: the catalogue in force, replaced when the tracking plan is read again.
//! - [`rows`]: typed row values and the [`RowBatch`] that one transaction writes.
//! - [`convert`]: a whole OTLP export request → mapped events, refusals counted and described.
//! - [`mapping`]: turns a [`crate::event::UsageEvent`] into a row (and a session update),
//!   checking each attribute's type and cutting text to its column's width.

pub mod convert;
pub mod current;
pub mod mapping;
pub mod rows;
pub mod settings;
pub mod tables;

pub use current::Current;
pub use mapping::{Catalog, MapError, Mapped};
pub use rows::{RowBatch, SessionRow, Value};
pub use tables::{Column, ColumnType, Table, TableId, TableKind};
