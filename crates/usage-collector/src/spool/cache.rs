//! Rows already mapped by the receiver, kept for the writer so a request is decoded once.
//!
//! The receiver validates every request by mapping it; after the spool append it offers the
//! mapped events here, keyed by the record's spool position. The writer takes them instead of
//! decoding the record again. The cache is only a shortcut: it holds at most a budget of
//! bytes (the spool can hold far more, for example during an outage, and memory must not grow
//! with it), a miss simply means the writer decodes the record from the spool, and nothing in
//! it survives a restart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::catalog::Mapped;
use crate::spool::Position;

/// Mapped events take about this many times the bytes of their spool record in memory (a
/// page visit: ~150 bytes in a record, ~1 KiB as values, strings and its session).
pub const MAPPED_FACTOR: usize = 8;

#[derive(Debug, Default)]
struct Entries {
    /// (catalogue generation, events, their cost) by the position after their record.
    by_end: BTreeMap<Position, (u64, Vec<Mapped>, usize)>,
    events: usize,
    bytes: usize,
}

/// Mapped events by spool position, within a budget of bytes.
#[derive(Debug)]
pub struct RowCache {
    entries: Mutex<Entries>,
    max_bytes: usize,
}

impl RowCache {
    /// A cache holding at most about `max_bytes` of mapped events.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: Mutex::default(),
            max_bytes,
        }
    }

    /// Keeps `events`, mapped by the catalogue of `generation`, for the record of
    /// `record_bytes` that ends at `end`, if they fit the budget.
    pub fn offer(&self, end: Position, generation: u64, events: Vec<Mapped>, record_bytes: usize) {
        let cost = record_bytes.saturating_mul(MAPPED_FACTOR);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.bytes + cost <= self.max_bytes {
            entries.events += events.len();
            entries.bytes += cost;
            entries.by_end.insert(end, (generation, events, cost));
        }
    }

    /// The events of the record that ends at `end`, if kept and mapped by the catalogue of
    /// `generation` (rows mapped by a catalogue since replaced may not fit this one's tables:
    /// the writer decodes the record instead); forgets every older entry (a record read
    /// before its events were offered leaves one behind).
    pub fn take(&self, end: Position, generation: u64) -> Option<Vec<Mapped>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let newer = entries.by_end.split_off(&end);
        let older = std::mem::replace(&mut entries.by_end, newer);
        for (_, events, cost) in older.values() {
            entries.events -= events.len();
            entries.bytes -= cost;
        }
        let (mapped_by, events, cost) = entries.by_end.remove(&end)?;
        entries.events -= events.len();
        entries.bytes -= cost;
        (mapped_by == generation).then_some(events)
    }

    /// Bytes held (estimated).
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(n: usize) -> Vec<Mapped> {
        (0..n)
            .map(|_| Mapped {
                id: [0; 16],
                row: None,
                session: None,
                truncated: Vec::new(),
            })
            .collect()
    }

    fn at(offset: u64) -> Position {
        Position { segment: 1, offset }
    }

    #[test]
    fn takes_once_forgets_older_and_keeps_the_budget() {
        let cache = RowCache::new(1000 * MAPPED_FACTOR);
        cache.offer(at(10), 1, mapped(2), 100);
        cache.offer(at(20), 1, mapped(3), 100);
        cache.offer(at(30), 1, mapped(1), 900); // over budget: not kept
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.bytes(), 200 * MAPPED_FACTOR);
        assert_eq!(cache.take(at(20), 1).map(|e| e.len()), Some(3));
        assert!(
            cache.is_empty(),
            "the entry at 10 was older and is forgotten"
        );
        assert!(cache.take(at(30), 1).is_none());
        assert!(cache.take(at(20), 1).is_none());
    }

    #[test]
    fn rows_of_another_catalogue_are_not_taken() {
        let cache = RowCache::new(1000 * MAPPED_FACTOR);
        cache.offer(at(10), 1, mapped(2), 100);
        assert!(
            cache.take(at(10), 2).is_none(),
            "mapped by another catalogue"
        );
        assert!(cache.is_empty());
    }
}
