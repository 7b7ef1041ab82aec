//! Writing spooled events to the database.
//!
//! - [`drain`]: follows the spool from its checkpoint, decodes ahead while it writes, writes
//!   the events in transactions of up to `batch_size` on two connections at once, retries
//!   transient failures without end (with backoff), and moves the checkpoint only past rounds
//!   that are committed together with every round before them; stops on shutdown once the
//!   spool is empty or the deadline has passed.
//! - [`dead_letters`]: when the database refuses rows for good, finds the offending events by
//!   bisecting the batch, writes the rest, and keeps each refused row with its reason.

pub mod dead_letters;
pub mod drain;

pub use drain::{Writer, WriterTask};
