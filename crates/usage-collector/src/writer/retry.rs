//! The retry policy: what each kind of database failure means for a batch, and how long to
//! wait before the next attempt.
//!
//! Classified by what the rows can fix:
//! - a failure that is about a row's own values ([`ErrorKind::RowValue`]: too long, out of
//!   range, invalid JSON, a constraint) is final for that row: the batch is bisected to find it
//!   and it becomes a dead letter, the rest is written;
//! - a lost or hung connection, a timeout, a deadlock, a server that cannot take writes for now
//!   (read-only, table or disk full) and a schema or permission problem are the database's,
//!   not the rows': the same batch is retried without end, with backoff, while the spool keeps
//!   accepting, and the readiness checks and `usage_collector_database_up` say so;
//! - a transaction larger than the database takes in one ([`ErrorKind::TooLarge`]: a Galera
//!   cluster's write-set limits) is split: the batch is written in halves, each its own
//!   transaction (each counts only the rows it inserted, so the summaries stay exact), and
//!   never dead-lettered; a single event still too large is retried like an outage, since
//!   only raising the limit helps it;
//! - a certification conflict on a Galera cluster (two nodes' transactions changed the same
//!   session or rollup rows; reason `certification_conflict`) is a [`ErrorKind::Conflict`]
//!   like a deadlock: retried with backoff, counted, and logged at DEBUG, since contention
//!   between collectors makes it a normal event; readiness hears of a conflict only once it
//!   has lasted [`CONFLICTS_BEFORE_DEGRADED`] attempts;
//! - an unknown failure is retried [`UNKNOWN_ATTEMPTS`] times, then the batch is bisected; a
//!   row is kept as a dead letter only when the rest of its batch was written while it kept
//!   failing, so a passing incident never sends a healthy batch to the dead letters.
//!   `usage_collector_write_failures_total{reason="unknown"}` counts every such attempt.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::checkpoint::Stop;
use super::send::Sender;
use crate::catalog::{Catalog, Mapped};
use crate::health::{Check, Health, Metrics};
use crate::sink::{ErrorKind, SinkError};

/// First wait after a failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest base wait between attempts while the database is away (jitter adds up to as much).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts at a batch failing for an unknown reason before it is bisected.
pub const UNKNOWN_ATTEMPTS: usize = 5;
/// Attempts at a batch that keeps meeting other transactions (deadlocks, certification
/// conflicts) before readiness reports the writer as failing.
pub const CONFLICTS_BEFORE_DEGRADED: usize = 3;

/// What a failure means for the batch that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The database's problem: retry the same batch until it passes.
    Retry,
    /// A row's own value: the rows the database refuses are final.
    Refused,
    /// Not known: retry a few times, then look for a row that causes it.
    Suspect,
    /// Too large for one transaction: write it in smaller ones.
    Split,
}

/// The policy for each kind of failure.
pub fn decide(kind: ErrorKind) -> Decision {
    match kind {
        ErrorKind::Connection
        | ErrorKind::Timeout
        | ErrorKind::Conflict
        | ErrorKind::ServerState
        | ErrorKind::Schema => Decision::Retry,
        ErrorKind::RowValue => Decision::Refused,
        ErrorKind::Unknown => Decision::Suspect,
        ErrorKind::TooLarge => Decision::Split,
    }
}

/// The writer was told to stop while the database was still failing.
#[derive(Debug)]
pub struct Stopped;

/// How long an unknown failure is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// [`UNKNOWN_ATTEMPTS`], then the failure is returned for bisection.
    Bounded,
    /// Until it passes (nothing else in the batch has been written yet, so the row is not
    /// known to be the cause).
    Unbounded,
}

/// Applies the policy: retries with backoff, logs a failure once while it lasts, and keeps the
/// readiness checks and `database_up` current.
#[derive(Debug, Clone)]
pub struct Policy {
    metrics: Arc<Metrics>,
    health: Health,
    stop: Stop,
    /// The last failure logged, so an outage is logged once, not at every retry.
    last_failure: Arc<Mutex<String>>,
}

impl Policy {
    /// The policy for one writer.
    pub fn new(metrics: Arc<Metrics>, health: Health, stop: Stop) -> Self {
        Self {
            metrics,
            health,
            stop,
            last_failure: Arc::default(),
        }
    }

    /// Sends `events` until they are written (`Ok(Ok)`), the failure is final for them
    /// (`Ok(Err)`: refused rows, or a suspect failure past its attempts), they must be split
    /// (`Ok(Err)` with [`ErrorKind::TooLarge`], for more than one event), or the writer stops.
    pub async fn deliver(
        &self,
        sender: &Sender,
        catalog: &Catalog,
        events: &[Mapped],
        patience: Patience,
    ) -> Result<Result<(), SinkError>, Stopped> {
        let mut waits = crate::backoff::exponential(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match sender.send(catalog, events).await {
                Ok(()) => {
                    self.last_failure
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clear();
                    return Ok(Ok(()));
                }
                Err(error) => error,
            };
            let decision = decide(error.kind);
            if decision == Decision::Split && events.len() > 1 {
                tracing::info!(
                    events = events.len(),
                    reason = error.reason,
                    error = %error.message,
                    "transaction larger than the database's write-set limit; writing the batch in halves"
                );
                return Ok(Err(error));
            }
            if decision == Decision::Refused
                || (decision == Decision::Suspect
                    && patience == Patience::Bounded
                    && attempts >= UNKNOWN_ATTEMPTS)
            {
                tracing::warn!(events = events.len(), reason = error.reason, error = %error.message, attempts, "database refused a batch; looking for the rows it refuses");
                return Ok(Err(error));
            }
            let wait = waits.next().unwrap_or(MAX_BACKOFF);
            self.report(&error, events.len(), wait, attempts);
            let wake = Instant::now() + wait;
            if self.stop.deadline().is_some_and(|d| d <= wake) {
                return Err(Stopped);
            }
            tokio::time::sleep_until(wake).await;
        }
    }

    /// A failure that will be retried: readiness, `database_up`, and one log line per distinct
    /// failure while it lasts (the metrics count every attempt). A certification conflict is
    /// logged at DEBUG only, and a conflict reaches readiness only once it lasts.
    fn report(&self, error: &SinkError, events: usize, wait: Duration, attempts: usize) {
        if error.kind == ErrorKind::Conflict && attempts < CONFLICTS_BEFORE_DEGRADED {
            tracing::debug!(events, reason = error.reason, error = %error.message, attempts, "batch met another transaction; retrying");
            return;
        }
        if matches!(
            error.kind,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::ServerState
        ) {
            self.metrics.database_up.set(0);
            self.health
                .set_database(Check::Failed(error.message.clone()));
        }
        self.health.set_writer(Check::Failed(format!(
            "retrying a batch of {events} events ({}): {}",
            error.reason, error.message
        )));
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        if error.reason == "certification_conflict" {
            tracing::debug!(
                events,
                reason = error.reason,
                attempts,
                "batch still meets other nodes' transactions; retrying"
            );
        } else if *last != error.message {
            tracing::warn!(events, reason = error.reason, error = %error.message, retry_in_ms = wait.as_millis() as u64, "batch write failed; retrying until it works (events stay in the spool)");
            last.clone_from(&error.message);
        } else {
            tracing::debug!(events, reason = error.reason, "batch write still failing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rows_own_values_are_final() {
        assert_eq!(decide(ErrorKind::RowValue), Decision::Refused);
        for kind in [
            ErrorKind::Connection,
            ErrorKind::Timeout,
            ErrorKind::Conflict,
            ErrorKind::ServerState,
            ErrorKind::Schema,
        ] {
            assert_eq!(decide(kind), Decision::Retry, "{kind:?}");
        }
        assert_eq!(decide(ErrorKind::Unknown), Decision::Suspect);
        assert_eq!(decide(ErrorKind::TooLarge), Decision::Split);
    }
}
