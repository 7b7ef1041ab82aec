//! Writing spooled events to the database, split the way a sink's jobs split:
//!
//! - [`checkpoint`]: the driver. Starts the [`Writer`], hands decoded rounds to as many write
//!   streams as the sink takes at once, and moves the spool's checkpoint past a round only when
//!   it and every round before it are committed; on shutdown it keeps writing until the spool
//!   is empty or the deadline passes.
//! - [`batch`]: building the work: reads the spool from the checkpoint in order, takes each
//!   record's rows from the receiver's cache or decodes them, and groups them into rounds.
//! - [`split`]: cuts a batch into transactions that stay within the database's write-set
//!   limits (a Galera cluster's), each exactly-once on its own.
//! - [`send`]: one attempt at writing one batch, under the write timeout, with its metrics.
//! - [`retry`]: the retry policy: what each kind of database failure means (retry, or a row
//!   the database refuses for good) and the backoff between attempts.
//! - [`dead_letters`]: finds the refused rows of a batch by bisecting it, writes the rest, and
//!   keeps each refused row with its reason.

pub mod batch;
pub mod checkpoint;
pub mod dead_letters;
pub mod retry;
pub mod send;
pub mod split;

pub use checkpoint::{Writer, WriterTask};
