//! What the tracker has done, and whether it is working: counters, health, and when to raise a
//! [`Warning`] (first failure, reminders, recovery, refused events).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::warning::{Warning, WarningKind, Warnings};

/// How often a continuing problem is reported again.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counts since the tracker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Events and usage spans handed to the tracker.
    pub recorded: u64,
    /// Of those, accepted by the collector.
    pub exported: u64,
    /// Of those, given up on after the export failed (collector down, refused, timed out).
    pub failed: u64,
    /// Of those, dropped without an export attempt because the queue was full.
    pub dropped: u64,
    /// Of those, refused without an export attempt because a value the collector requires
    /// (a page visit's path, a feature use's name) was missing or empty.
    pub invalid: u64,
}

impl Stats {
    /// Events still queued or being sent. Never underflows: the counts are read so that every
    /// outcome counted is also counted as recorded, and the difference saturates at zero.
    pub fn pending(&self) -> u64 {
        let settled = self
            .exported
            .saturating_add(self.failed)
            .saturating_add(self.dropped)
            .saturating_add(self.invalid);
        self.recorded.saturating_sub(settled)
    }
}

/// Whether export works, for the application's own health endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last export succeeded (or none was needed yet) and nothing was dropped since.
    Healthy,
    /// Export is failing or events are being dropped.
    Degraded {
        /// The most recent problem, with the endpoint.
        last_error: String,
        /// When the problems began.
        since: SystemTime,
    },
}

/// An event is counted as recorded before any outcome (Release), and outcomes are read before
/// `recorded` (Acquire), so a snapshot never has more outcomes than recorded events.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    recorded: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
}

#[derive(Debug)]
struct Trouble {
    last_error: String,
    since: SystemTime,
    started: Instant,
    warned: Option<Instant>,
}

/// Refused events not reported yet, and when they were last reported.
#[derive(Debug, Default)]
struct Refusals {
    last: Option<(&'static str, &'static str)>,
    reported: u64,
    warned: Option<Instant>,
}

/// State shared by the application's threads (counting) and the export thread (reporting).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    counters: Counters,
    trouble: Mutex<Option<Trouble>>,
    dropped_reported: AtomicU64,
    refusals: Mutex<Refusals>,
    warnings: Warnings,
}

impl Shared {
    pub(crate) fn new(warnings: Warnings) -> Self {
        Self {
            warnings,
            ..Self::default()
        }
    }

    pub(crate) fn recorded(&self) {
        self.counters.recorded.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Release);
    }

    /// A recorded event of a catalogue `event` lacks the required attribute `key`.
    pub(crate) fn refused(&self, event: &'static str, key: &'static str) {
        self.recorded();
        self.counters.invalid.fetch_add(1, Ordering::Release);
        self.refusals.lock().unwrap_or_else(|e| e.into_inner()).last = Some((event, key));
    }

    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let exported = c.exported.load(Ordering::Acquire);
        let failed = c.failed.load(Ordering::Acquire);
        let dropped = c.dropped.load(Ordering::Acquire);
        let invalid = c.invalid.load(Ordering::Acquire);
        Stats {
            recorded: c.recorded.load(Ordering::Acquire),
            exported,
            failed,
            dropped,
            invalid,
        }
    }

    pub(crate) fn health(&self) -> Health {
        match &*self.trouble.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Health::Healthy,
            Some(t) => Health::Degraded {
                last_error: t.last_error.clone(),
                since: t.since,
            },
        }
    }

    /// Raises a warning with the counts as they are now.
    pub(crate) fn warn(&self, kind: WarningKind, message: String) {
        self.warnings.emit(Warning {
            kind,
            message,
            stats: self.stats(),
        });
    }

    /// A batch reached the collector.
    pub(crate) fn export_succeeded(&self, events: u64, endpoint: &str) {
        self.counters.exported.fetch_add(events, Ordering::Release);
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self.counters.dropped.load(Ordering::Acquire);
        let new_drops = dropped > self.dropped_reported.swap(dropped, Ordering::Relaxed);
        if new_drops {
            // Export works but the queue overflowed: still degraded, keep saying why.
            let warning = self.note(
                &mut trouble,
                format!("queue full: events dropped before export to {endpoint}"),
            );
            drop(trouble);
            self.raise(warning);
            return;
        }
        let recovered = trouble.take();
        drop(trouble);
        if let Some(t) = recovered {
            self.warn(
                WarningKind::Recovered,
                format!(
                    "export to {endpoint} works again after {}s",
                    t.started.elapsed().as_secs()
                ),
            );
        }
    }

    /// A batch was given up on.
    pub(crate) fn export_failed(&self, events: u64, endpoint: &str, error: &str) {
        self.counters.failed.fetch_add(events, Ordering::Release);
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        let warning = self.note(
            &mut trouble,
            format!("cannot export usage events to {endpoint}: {error}"),
        );
        drop(trouble);
        self.raise(warning);
    }

    /// Reports drops noticed between exports.
    pub(crate) fn check_drops(&self, endpoint: &str) {
        let dropped = self.counters.dropped.load(Ordering::Acquire);
        if dropped > self.dropped_reported.load(Ordering::Relaxed) {
            self.dropped_reported.store(dropped, Ordering::Relaxed);
            let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
            let warning = self.note(
                &mut trouble,
                format!("queue full: events dropped before export to {endpoint}"),
            );
            drop(trouble);
            self.raise(warning);
        }
    }

    /// Reports events refused since the last report: the first at once, then at most once per
    /// [`WARN_EVERY`]. Refused events are the application's mistake, not an export problem, so
    /// they do not change [`Health`].
    pub(crate) fn check_refusals(&self) {
        let invalid = self.counters.invalid.load(Ordering::Acquire);
        let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let due = refusals
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if invalid <= refusals.reported || !due {
            return;
        }
        let new = invalid - refusals.reported;
        refusals.reported = invalid;
        refusals.warned = Some(now);
        let (event, key) = refusals
            .last
            .unwrap_or(("an event", "a required attribute"));
        drop(refusals);
        self.warn(
            WarningKind::InvalidEvents,
            format!(
                "{new} usage event(s) not sent: a value the collector requires was missing or \
                 empty (last: {event} without `{key}`)"
            ),
        );
    }

    /// Records the problem; returns the warning to raise when one is due (the first, then at
    /// most once per [`WARN_EVERY`]). Raised by the caller once the lock is released, so that a
    /// handler can ask for `health()`.
    #[must_use]
    fn note(&self, trouble: &mut Option<Trouble>, error: String) -> Option<(WarningKind, String)> {
        let now = Instant::now();
        let t = trouble.get_or_insert_with(|| Trouble {
            last_error: String::new(),
            since: SystemTime::now(),
            started: now,
            warned: None,
        });
        t.last_error = error;
        let due = t
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if !due {
            return None;
        }
        let kind = if t.warned.is_some() {
            WarningKind::StillDegraded
        } else {
            WarningKind::Degraded
        };
        t.warned = Some(now);
        Some((kind, t.last_error.clone()))
    }

    fn raise(&self, warning: Option<(WarningKind, String)>) {
        if let Some((kind, message)) = warning {
            self.warn(kind, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_never_underflows() {
        let stats = Stats {
            recorded: 3,
            exported: 2,
            failed: 1,
            dropped: 1,
            invalid: 0,
        };
        assert_eq!(stats.pending(), 0);
        let stats = Stats {
            recorded: 10,
            exported: u64::MAX,
            failed: 1,
            ..Stats::default()
        };
        assert_eq!(stats.pending(), 0);
        let stats = Stats {
            recorded: 10,
            exported: 4,
            failed: 1,
            dropped: 2,
            invalid: 1,
        };
        assert_eq!(stats.pending(), 2);
    }

    /// Events settle on another thread while the counts are read: no snapshot may hold more
    /// outcomes than recorded events.
    #[test]
    fn a_snapshot_never_has_more_outcomes_than_recorded_events() {
        let shared = std::sync::Arc::new(Shared::default());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let settler = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for _ in rx {
                    shared.export_succeeded(1, "test");
                }
            })
        };
        let recorder = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for i in 0..200_000u32 {
                    if i % 7 == 0 {
                        shared.refused("page_visit", "url.path");
                    } else {
                        shared.recorded();
                        tx.send(()).unwrap();
                    }
                }
            })
        };
        while !recorder.is_finished() {
            let s = shared.stats();
            assert!(
                s.exported + s.failed + s.dropped + s.invalid <= s.recorded,
                "{s:?}"
            );
        }
        recorder.join().unwrap();
        settler.join().unwrap();
        assert_eq!(shared.stats().pending(), 0);
    }
}
