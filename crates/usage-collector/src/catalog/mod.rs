//! Which event goes to which table and column.
//!
//! - [`tables`]: the tables and columns the collector writes, derived from the shared catalogue
//!   in `usage_tracker::catalog`, with their SQL-independent types.
//! - [`rows`]: typed row values and the [`RowBatch`] that one transaction writes.
//! - [`convert`]: a whole OTLP export request → mapped events, refusals counted and described.
//! - [`mapping`]: turns a [`crate::event::UsageEvent`] into a row (and a session update),
//!   checking each attribute's type and cutting text to its column's width.

pub mod convert;
pub mod mapping;
pub mod rows;
pub mod tables;

pub use mapping::{Catalog, MapError, Mapped};
pub use rows::{RowBatch, SessionRow, Value};
pub use tables::{Column, ColumnType, Table, TableId};
