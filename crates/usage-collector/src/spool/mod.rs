//! The spool: a durable write-ahead log between the receiver and the writer.
//!
//! # Design
//!
//! **Guarantee.** A request's events are appended and `fsync`ed before the client hears OK;
//! the writer moves the checkpoint past them only after the database committed them. Whatever
//! lies after the checkpoint is replayed on start. Together with idempotent inserts keyed by
//! event id this gives exactly-once rows across crashes, restarts and outages.
//!
//! **On disk.** `<spool-dir>/` holds segments named `<id, 20 digits>.wal` (the id counts up
//! from the first segment; the segment after the checkpoint's is the next id), a `checkpoint`
//! file, a `lock` file and a `quarantine/` folder. A segment is a sequence of records:
//!
//! ```text
//! record  = magic:[F5 'S' 'P' '2']  length:u32le  crc32:u32le  payload[length]
//! payload = version:u8(=1)  signal:u8  received_unix_nano:u64le  body
//! ```
//!
//! The CRC (CRC-32, IEEE) covers the length and the payload; the magic marks where a record
//! starts, so recovery can find the next record after damage. Segments written by collectors
//! before the magic hold `length:u32le crc32:u32le payload` (CRC over the payload) and are still
//! read, with the recovery rules below minus the resynchronisation. An accepted request is one
//! record of signal 4: its valid events as mapped rows ([`rows`]), so the writer neither decodes
//! OTLP nor maps again, however long the backlog. Tables and columns are named in each record,
//! so a spool survives collector upgrades and catalogue changes (values are placed by column
//! name). A heartbeat (signal 3) holds the collector's instance name. Signals 1 and 2 hold an
//! OTLP logs or traces export request as received: spools written by earlier collectors hold
//! them, and the writer still decodes and maps them. Signal 5 is padding that readers skip.
//! `checkpoint` holds `<segment> <offset>` (text, replaced atomically by rename): everything
//! before it is in the database. `lock` holds the process id of the collector that has the
//! folder: it takes an exclusive lock on it at open (released by the kernel when the process
//! ends, crash included), and a second collector on the same folder exits naming the first.
//!
//! **Writing.** One thread appends: it takes every waiting request, writes them, calls
//! `fdatasync` once for all of them (group commit), then answers them. A segment is closed at
//! [`SEGMENT_BYTES`]. When the bytes not yet written to the database would exceed the cap, the
//! append is refused (the client gets a retryable status and retries later); a body larger
//! than a record holds ([`format::MAX_BODY`]) is refused before anything is written.
//!
//! **Recovery rules** (on open), which never need a person to delete anything:
//! - segments wholly before the checkpoint are deleted (their rows are committed);
//! - damaged bytes followed by a record that decodes (found by its magic) are corruption: they
//!   are copied to `quarantine/<segment>.<offset>.<time>` (counted in
//!   `usage_collector_spool_quarantined_segments_total` and logged) and overwritten in place by
//!   a padding record of the same length, so positions do not move and every record after them
//!   is replayed;
//! - damage with nothing valid after it, in the last segment, where the last record's write is
//!   incomplete (its header or its claimed length runs past the end), is a torn tail from a
//!   crash before `fsync`: it was never acknowledged, so the segment is cut there;
//! - any other damage at the end of a segment (a complete record that fails its CRC) is
//!   corruption: copied to quarantine, then cut;
//! - an unreadable checkpoint means "replay everything" (repeats are no-ops); one that reads
//!   but does not point at a record's start (damage that still parses) replays its segment
//!   from the start, since every read from inside a record would fail.
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
