//! What the tracker has done, and whether it is working: counters, health, and the warnings it
//! writes to stderr (never through `tracing`, so they cannot loop back into the export).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// How often a continuing failure is reported again on stderr.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Counts since the tracker started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events and usage spans handed to the tracker.
    pub recorded: u64,
    /// Of those, accepted by the collector.
    pub exported: u64,
    /// Of those, given up on after the export failed (collector down, refused, timed out).
    pub failed: u64,
    /// Of those, dropped without an export attempt because the queue was full.
    pub dropped: u64,
}

impl Stats {
    /// Events still queued or being sent.
    pub fn pending(&self) -> u64 {
        self.recorded - self.exported - self.failed - self.dropped
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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    recorded: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Trouble {
    last_error: String,
    since: SystemTime,
    started: Instant,
    warned: Option<Instant>,
}

/// State shared by the application's threads (counting) and the export thread (reporting).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    counters: Counters,
    trouble: Mutex<Option<Trouble>>,
    dropped_reported: AtomicU64,
}

impl Shared {
    pub(crate) fn recorded(&self) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            recorded: self.counters.recorded.load(Ordering::Relaxed),
            exported: self.counters.exported.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
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

    /// A batch reached the collector.
    pub(crate) fn export_succeeded(&self, events: u64, endpoint: &str) {
        self.counters.exported.fetch_add(events, Ordering::Relaxed);
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        let new_drops = dropped > self.dropped_reported.swap(dropped, Ordering::Relaxed);
        if new_drops {
            // Export works but the queue overflowed: still degraded, keep saying why.
            self.note(
                &mut trouble,
                format!("queue full: events dropped before export to {endpoint}"),
            );
            return;
        }
        if let Some(t) = trouble.take() {
            eprintln!(
                "usage-tracker INFO: export to {endpoint} works again after {}s; {}",
                t.started.elapsed().as_secs(),
                self.summary()
            );
        }
    }

    /// A batch was given up on.
    pub(crate) fn export_failed(&self, events: u64, endpoint: &str, error: &str) {
        self.counters.failed.fetch_add(events, Ordering::Relaxed);
        let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        self.note(
            &mut trouble,
            format!("cannot export usage events to {endpoint}: {error}"),
        );
    }

    /// Reports drops noticed between exports.
    pub(crate) fn check_drops(&self, endpoint: &str) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported.load(Ordering::Relaxed) {
            self.dropped_reported.store(dropped, Ordering::Relaxed);
            let mut trouble = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
            self.note(
                &mut trouble,
                format!("queue full: events dropped before export to {endpoint}"),
            );
        }
    }

    fn note(&self, trouble: &mut Option<Trouble>, error: String) {
        let now = Instant::now();
        let t = trouble.get_or_insert_with(|| Trouble {
            last_error: String::new(),
            since: SystemTime::now(),
            started: now,
            warned: None,
        });
        t.last_error = error;
        if t.warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            let again = if t.warned.is_some() { " (still)" } else { "" };
            eprintln!(
                "usage-tracker WARN{again}: {}; {}",
                t.last_error,
                self.summary()
            );
            t.warned = Some(now);
        }
    }

    fn summary(&self) -> String {
        let s = self.stats();
        format!(
            "events recorded {}, exported {}, failed {}, dropped {}",
            s.recorded, s.exported, s.failed, s.dropped
        )
    }
}
