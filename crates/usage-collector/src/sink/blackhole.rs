//! The blackhole sink, for measuring the receive path alone (decode, validate, map, spool):
//! chosen at start-up with `--database-url blackhole://`, it takes every batch at once and
//! stores nothing, so the writer, the checkpoint and the spool run as in production without a
//! database. Never for real traffic: its rows are gone.

use super::Written;
use crate::catalog::{Catalog, RowBatch};

/// The URL scheme that selects the blackhole.
pub const SCHEME: &str = "blackhole";

/// How many batches it takes at once (as many as a pool of four connections would).
pub const STREAMS: usize = 3;

/// What writing `batch` would have committed.
pub fn write(catalog: &Catalog, batch: &RowBatch<'_>) -> Written {
    Written {
        rows: batch
            .tables()
            .map(|(table, rows)| (catalog.tables()[table].name, rows.len() as u64))
            .collect(),
        sessions: batch.sessions.len() as u64,
    }
}
