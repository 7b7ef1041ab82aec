//! Rows already mapped by the receiver, kept for the writer so a request is decoded once.
//!
//! The receiver validates every request by mapping it; after the spool append it offers the
//! mapped events here, keyed by the record's spool position. The writer takes them instead of
//! decoding the record again. The cache is only a shortcut: it holds at most a budget of
//! events (the spool can hold far more, for example during an outage), a miss simply means the
//! writer decodes the record from the spool, and nothing in it survives a restart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::catalog::Mapped;
use crate::spool::Position;

/// Events the cache holds at most (two of the writer's rounds of eight 512-event requests;
/// more costs memory without speed).
pub const BUDGET_EVENTS: usize = 8_192;

#[derive(Debug, Default)]
struct Entries {
    by_end: BTreeMap<Position, Vec<Mapped>>,
    events: usize,
}

/// Mapped events by spool position.
#[derive(Debug, Default)]
pub struct RowCache {
    entries: Mutex<Entries>,
}

impl RowCache {
    /// Keeps `events` for the record that ends at `end`, if they fit the budget.
    pub fn offer(&self, end: Position, events: Vec<Mapped>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.events + events.len() <= BUDGET_EVENTS {
            entries.events += events.len();
            entries.by_end.insert(end, events);
        }
    }

    /// The events of the record that ends at `end`, if kept; forgets every older entry (a
    /// record read before its events were offered leaves one behind).
    pub fn take(&self, end: Position) -> Option<Vec<Mapped>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let newer = entries.by_end.split_off(&end);
        let older = std::mem::replace(&mut entries.by_end, newer);
        entries.events -= older.values().map(Vec::len).sum::<usize>();
        let found = entries.by_end.remove(&end);
        if let Some(events) = &found {
            entries.events -= events.len();
        }
        found
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
        let cache = RowCache::default();
        cache.offer(at(10), mapped(2));
        cache.offer(at(20), mapped(3));
        cache.offer(at(30), mapped(BUDGET_EVENTS)); // over budget: not kept
        assert_eq!(cache.len(), 5);
        assert_eq!(cache.take(at(20)).map(|e| e.len()), Some(3));
        assert!(
            cache.is_empty(),
            "the entry at 10 was older and is forgotten"
        );
        assert!(cache.take(at(30)).is_none());
        assert!(cache.take(at(20)).is_none());
    }
}
