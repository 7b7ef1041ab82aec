//! Sessions this collector has seen committed, so that a batch can merge them without reading
//! them first.
//!
//! A batch's session write used to begin with a locking read of every session it touches, to
//! learn which exist (a new one counts in the daily rollup's `sessions`) and their stored start
//! (a late event that moves it earlier moves the session to another day). In steady traffic
//! almost every session a batch touches was written by an earlier batch, and that read was
//! about an eighth of the database's time per batch.
//!
//! What a committed batch wrote is remembered here: the session exists, and its start is at
//! most the one remembered (a start only ever moves earlier). A later batch whose session starts
//! no earlier than that, and which adds to one of its counters, merges it without the read: the
//! session cannot be new, and its start does not move. Two things could make that wrong, and
//! both are ruled out:
//!
//! - the session was deleted since (retention): only sessions whose last activity is within
//!   the last hour are remembered, and an entry is trusted for an hour, while retention deletes
//!   only sessions inactive for at least a day;
//! - anything else (an operator's DELETE, a database restored from a backup): the merge's
//!   affected-row count says it. MySQL reports 2 for a row that existed and changed and 1 for
//!   one it inserted (or left as it was), and each merged session adds to a counter, so any
//!   count other than twice the sessions means one was not there. The sink then rolls the batch
//!   back, forgets what it knew and writes the batch again with the read
//!   ([`StaleSessions`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::PrimitiveDateTime;

/// How long an entry is trusted, and how recent a session's last activity must be for it to be
/// remembered: together far inside retention's shortest period (a day).
const TRUSTED_FOR: Duration = Duration::from_secs(3600);

/// Most sessions remembered; past it everything is forgotten and learnt again (a read per
/// session, once).
const CAPACITY: usize = 16_384;

/// What one session is known by.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The stored start is at most this.
    start: PrimitiveDateTime,
    /// When it was remembered.
    at: Instant,
}

/// Sessions known to exist, by service and session id, with an upper bound of their start.
#[derive(Debug, Default)]
pub struct KnownSessions {
    inner: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    by_service: HashMap<String, HashMap<String, Entry>>,
    len: usize,
}

impl KnownSessions {
    /// The start a session's stored start is at most, if it is known to exist.
    pub fn start(&self, service: &str, session_id: &str) -> Option<PrimitiveDateTime> {
        let known = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = known.by_service.get(service)?.get(session_id)?;
        (entry.at.elapsed() < TRUSTED_FOR).then_some(entry.start)
    }

    /// Remembers sessions a transaction has committed: (service, session id, the start stored
    /// is at most this, the last activity stored is at least this). A session whose last
    /// activity is over an hour old (`now` is the current UTC time) is not remembered.
    pub fn remember<'a>(
        &self,
        now: PrimitiveDateTime,
        sessions: impl IntoIterator<Item = (&'a str, &'a str, PrimitiveDateTime, PrimitiveDateTime)>,
    ) {
        let recent = now - TRUSTED_FOR;
        let at = Instant::now();
        let mut known = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (service, session_id, start, last_activity) in sessions {
            if last_activity < recent {
                continue;
            }
            if known.len >= CAPACITY {
                known.by_service.clear();
                known.len = 0;
            }
            let ids = match known.by_service.get_mut(service) {
                Some(ids) => ids,
                None => known.by_service.entry(service.to_owned()).or_default(),
            };
            let entry = Entry { start, at };
            let added = match ids.get_mut(session_id) {
                Some(old) => {
                    *old = entry;
                    false
                }
                None => {
                    ids.insert(session_id.to_owned(), entry);
                    true
                }
            };
            known.len += usize::from(added);
        }
    }

    /// Forgets every session (one was found missing, so what else is known is doubtful too).
    pub fn forget(&self) {
        let mut known = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        known.by_service.clear();
        known.len = 0;
    }

    /// Sessions remembered (trusted or not).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session merged without a read was not where the collector knew it to be (its merge
/// inserted or left a row instead of changing it): the sink rolls the batch back, forgets the
/// sessions it knew and writes the batch again, reading them. Never reaches the writer.
#[derive(Debug, thiserror::Error)]
#[error(
    "{merged} sessions merged without a read reported {affected} affected rows, not {expected}"
)]
pub struct StaleSessions {
    /// Sessions in the merge.
    pub merged: usize,
    /// Rows the server reported affected.
    pub affected: u64,
    /// Rows it reports when every session existed and changed (two each).
    pub expected: u64,
}

impl StaleSessions {
    /// As a driver error, so it travels the sink's `sqlx::Error` paths to the transaction.
    pub fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Database(Box::new(self))
    }

    /// True if `error` is this.
    pub fn is(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(e) if e.try_downcast_ref::<StaleSessions>().is_some())
    }
}

crate::sink::error::database_error!(
    StaleSessions,
    "a session merged without a read was not there"
);

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_session_is_known_with_its_start_once_remembered() {
        let known = KnownSessions::default();
        let now = datetime!(2026-12-07 10:00);
        assert_eq!(known.start("web", "s1"), None);
        known.remember(
            now,
            [
                ("web", "s1", datetime!(2026-12-07 09:50), now),
                ("web", "s2", datetime!(2026-12-07 09:55), now),
                ("api", "s1", datetime!(2026-12-07 09:40), now),
            ],
        );
        assert_eq!(known.start("web", "s1"), Some(datetime!(2026-12-07 09:50)));
        assert_eq!(known.start("api", "s1"), Some(datetime!(2026-12-07 09:40)));
        assert_eq!(known.start("api", "s2"), None);
        assert_eq!(known.len(), 3);
        // Remembered again: replaced, not counted twice.
        known.remember(now, [("web", "s1", datetime!(2026-12-07 09:30), now)]);
        assert_eq!(known.start("web", "s1"), Some(datetime!(2026-12-07 09:30)));
        assert_eq!(known.len(), 3);
        known.forget();
        assert_eq!(known.start("web", "s1"), None);
        assert!(known.is_empty());
    }

    #[test]
    fn a_session_inactive_for_over_an_hour_is_not_remembered() {
        // Retention could delete it (after a day at the least) while it was still trusted.
        let known = KnownSessions::default();
        let now = datetime!(2026-12-07 10:00);
        known.remember(
            now,
            [
                (
                    "web",
                    "old",
                    datetime!(2026-12-01 09:00),
                    datetime!(2026-12-07 08:59),
                ),
                (
                    "web",
                    "new",
                    datetime!(2026-12-01 09:00),
                    datetime!(2026-12-07 09:01),
                ),
            ],
        );
        assert_eq!(known.start("web", "old"), None);
        assert_eq!(known.start("web", "new"), Some(datetime!(2026-12-01 09:00)));
    }

    #[test]
    fn it_holds_a_bounded_number_of_sessions() {
        let known = KnownSessions::default();
        let now = datetime!(2026-12-07 10:00);
        let ids: Vec<String> = (0..CAPACITY + 10).map(|n| format!("s{n}")).collect();
        known.remember(now, ids.iter().map(|id| ("web", id.as_str(), now, now)));
        assert_eq!(known.len(), 10);
        assert_eq!(known.start("web", &ids[CAPACITY + 9]), Some(now));
        assert_eq!(known.start("web", "s0"), None);
    }
}
