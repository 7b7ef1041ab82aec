//! The operator's commands, which need no SQL: what a running collector is doing
//! (`usage-collector status`), dead letters listed and written again once their cause is fixed
//! (`dead-letters list`, `dead-letters replay`), and the summaries recomputed from the raw rows
//! (`rollups rebuild`).
//!
//! - [`status`]: the `/status` body assembled from the stages, and the command that reads it.
//! - [`dead_letters`]: listing and replaying dead letters, exactly once.
//! - [`rollups`]: rebuilding the daily rollup and the session counters for a range of days,
//!   while collectors write.

pub mod dead_letters;
pub mod rollups;
pub mod status;
