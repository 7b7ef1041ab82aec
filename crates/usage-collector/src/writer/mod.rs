//! Writing batches to the database.
//!
//! - [`batcher`]: merges concurrent requests' rows into transactions of up to `batch_size`
//!   rows, writes up to `concurrency` of them at once, retries transient failures, and answers
//!   each request only after its rows are committed.

pub mod batcher;

pub use batcher::{Writer, WriterTask};
