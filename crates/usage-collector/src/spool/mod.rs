//! The spool: a durable write-ahead log between the receiver and the writer.
//!
//! # Design
//!
//! **Guarantee.** A request's events are appended and `fsync`ed before the client hears OK;
//! the writer moves the checkpoint past them only after the database committed them. Whatever
//! lies after the checkpoint is replayed on start. Together with idempotent inserts keyed by
//! event id this gives exactly-once rows across crashes, restarts and outages.
//!
//! **On disk.** `<spool-dir>/` holds segments named `<first-sequence, 20 digits>.wal`, a
//! `checkpoint` file, and a `quarantine/` folder. A segment is a sequence of records:
//!
//! ```text
//! record  = length:u32le  crc32:u32le  payload[length]
//! payload = version:u8(=1)  signal:u8  received_unix_nano:u64le  body
//! ```
//!
//! The CRC (CRC-32, IEEE) covers the payload. An accepted request is one record of signal 4:
//! its valid events as mapped rows ([`rows`]), so the writer neither decodes OTLP nor maps
//! again, however long the backlog. Tables and columns are named in each record, so a spool
//! survives collector upgrades and catalogue changes (values are placed by column name). A
//! heartbeat (signal 3) holds the collector's instance name. Signals 1 and 2 hold an OTLP
//! logs or traces export request as received: spools written by earlier collectors hold them,
//! and the writer still decodes and maps them.
//! `checkpoint` holds `<segment> <offset>` (text, replaced atomically by rename): everything
//! before it is in the database.
//!
//! **Writing.** One thread appends: it takes every waiting request, writes them, calls
//! `fdatasync` once for all of them (group commit), then answers them. A segment is closed at
//! [`SEGMENT_BYTES`]. When the bytes not yet written to the database would exceed the cap, the
//! append is refused (the client gets a retryable status and retries later).
//!
//! **Recovery rules** (on open), which never need a person to delete anything:
//! - segments wholly before the checkpoint are deleted (their rows are committed);
//! - a record whose length runs past the end of the *last* segment, or whose CRC fails with
//!   nothing valid after it, is a torn tail from a crash before `fsync`: it was never
//!   acknowledged, so the segment is truncated there;
//! - a bad record anywhere else is corruption: the segment is copied whole to `quarantine/`
//!   (counted and logged), then truncated before the bad record, so the good records before it
//!   are replayed and the collector carries on;
//! - an unreadable checkpoint means "replay everything" (repeats are no-ops).
//!
//! - [`format`]: record encoding and decoding.
//! - [`rows`]: the body of a rows record: mapped events, tables and columns by name.
//! - [`wal`]: the [`Spool`]: open and recover, append with group commit, read, checkpoint.

pub mod cache;
pub mod format;
pub mod rows;
pub mod wal;

pub use format::{Payload, SpoolSignal};
pub use wal::{AppendError, Position, ReadBatch, Recovery, Spool, SpoolError};

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
