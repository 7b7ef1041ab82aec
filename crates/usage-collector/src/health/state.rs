//! Readiness: can this replica take events safely, is the data path working, and if not, why.
//!
//! Each check holds `ok`, `pending: …` or `failed: …` with the reason (the database's own error
//! text, secrets already removed).
//!
//! The policy keeps replicas in the Service during a database outage, because the spool is
//! what absorbs it — taking every replica out would only move the loss into the apps' small
//! queues:
//! - `ok` (200): every check passes.
//! - `degraded` (200): startup verification has passed once, and since then the database, the
//!   schema or the writer is failing; events are still accepted into the spool, and
//!   `usage_collector_database_up` and the alert rules page someone. With `strict` (the
//!   `/health/ready?strict=1` form), 503.
//! - `degraded` (503): startup verification has not passed yet (a wrong password in a new
//!   rollout stalls the rollout).
//! - `failing` (503): this replica cannot take events safely: the spool is above
//!   [`SPOOL_HIGH_WATER`] of its cap, spool writes are failing (a full disk), the writer stopped
//!   for good, or the collector is shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// One readiness check's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not known yet (startup).
    Pending(String),
    /// Passing.
    Ok,
    /// Failing, with the reason.
    Failed(String),
}

impl Check {
    /// The check as `/health/ready` shows it: the endpoint is unauthenticated, so a database
    /// account and client host in the reason (`'usage'@'10.0.0.7'`) are masked; the log lines
    /// keep them.
    fn render(&self) -> String {
        match self {
            Check::Pending(why) => format!("pending: {}", mask_accounts(why)),
            Check::Ok => "ok".to_owned(),
            Check::Failed(why) => format!("failed: {}", mask_accounts(why)),
        }
    }
}

/// `'user'@'host'` (as MySQL names an account in its errors) becomes `'***'@'***'`.
fn mask_accounts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("'@'") {
        let (before, after) = rest.split_at(at);
        let (Some(user_start), Some(host_end)) = (before.rfind('\''), after[3..].find('\'')) else {
            break;
        };
        out.push_str(&before[..user_start]);
        out.push_str("'***'@'***'");
        rest = &after[3 + host_end + 1..];
    }
    out.push_str(rest);
    out
}

/// The body of `/health/ready`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// `ok`, `degraded` or `failing`.
    pub status: &'static str,
    /// Each check's rendered state.
    pub checks: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Debug)]
struct Checks {
    database: Check,
    schema: Check,
    writer: Check,
    /// The last spool append's failure, until an append succeeds again.
    spool_writes: Check,
}

/// Share of the spool's cap above which the collector reports failing.
pub const SPOOL_HIGH_WATER: f64 = 0.9;

/// Shared readiness state, updated by verification, the writer and the receiver.
#[derive(Clone)]
pub struct Health {
    checks: Arc<RwLock<Checks>>,
    /// The spool's (requests, bytes) and its cap, for the spool check.
    spool: Arc<std::sync::OnceLock<(super::metrics::SpoolGauge, u64)>>,
    closing: Arc<AtomicBool>,
    /// Set once startup verification has passed.
    verified: Arc<AtomicBool>,
    /// Set when the writer stopped for good (it could not be restarted).
    writer_dead: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.checks)
            .field("closing", &self.closing)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Everything pending.
    pub fn new() -> Self {
        let pending = || Check::Pending("startup verification has not finished".to_owned());
        Self {
            checks: Arc::new(RwLock::new(Checks {
                database: pending(),
                schema: pending(),
                writer: Check::Ok,
                spool_writes: Check::Ok,
            })),
            spool: Arc::default(),
            closing: Arc::default(),
            verified: Arc::default(),
            writer_dead: Arc::default(),
        }
    }

    /// Where the spool check reads the spool's depth, and its cap.
    pub fn attach_spool(&self, capacity: u64, depth: super::metrics::SpoolGauge) {
        if self.spool.set((depth, capacity)).is_err() {
            tracing::debug!("spool already attached to the health checks");
        }
    }

    /// Marks the collector as shutting down: new requests are refused.
    pub fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Startup verification passed: from now on a database outage is `degraded`, not unready.
    pub fn set_verified(&self) {
        self.verified.store(true, Ordering::SeqCst);
    }

    /// True once startup verification has passed (nothing is written before).
    pub fn schema_verified(&self) -> bool {
        self.verified.load(Ordering::SeqCst)
            && self.checks.read().unwrap_or_else(|e| e.into_inner()).schema == Check::Ok
    }

    /// The writer stopped for good: readiness and liveness fail.
    pub fn set_writer_dead(&self, why: String) {
        self.writer_dead.store(true, Ordering::SeqCst);
        self.set_writer(Check::Failed(why));
    }

    /// False once the writer stopped for good (`/health/live` then fails, so the replica is
    /// restarted).
    pub fn live(&self) -> bool {
        !self.writer_dead.load(Ordering::SeqCst)
    }

    fn spool_check(&self, spool_writes: &Check) -> Check {
        if self.closing() {
            return Check::Failed("shutting down: new requests are refused".to_owned());
        }
        if let Check::Failed(why) = spool_writes {
            return Check::Failed(format!("spool writes are failing: {why}"));
        }
        let Some((depth, cap)) = self.spool.get() else {
            return Check::Ok;
        };
        let (records, bytes) = depth();
        let cap = *cap;
        if bytes as f64 >= cap as f64 * SPOOL_HIGH_WATER {
            Check::Failed(format!(
                "{records} requests ({bytes} of {cap} bytes) wait for the database: above the high-water mark"
            ))
        } else {
            Check::Ok
        }
    }

    fn update(&self, f: impl FnOnce(&mut Checks)) {
        // A poisoned lock only means a panic elsewhere mid-update; the data is still usable.
        let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
        f(&mut checks);
    }

    /// Sets the database check.
    pub fn set_database(&self, check: Check) {
        self.update(|c| c.database = check);
    }

    /// Sets the schema check.
    pub fn set_schema(&self, check: Check) {
        self.update(|c| c.schema = check);
    }

    /// Sets the writer check.
    pub fn set_writer(&self, check: Check) {
        self.update(|c| c.writer = check);
    }

    /// Records the outcome of a spool append (a failure fails readiness until one succeeds).
    pub fn set_spool_writes(&self, check: Check) {
        let changed = self
            .checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .spool_writes
            != check;
        if changed {
            self.update(|c| c.spool_writes = check);
        }
    }

    /// True while the database check passes.
    pub fn database_ok(&self) -> bool {
        self.checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .database
            == Check::Ok
    }

    /// The readiness report and whether it means ready; `strict` counts a degraded data path
    /// as not ready.
    pub fn readiness(&self, strict: bool) -> (Readiness, bool) {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let spool = self.spool_check(&checks.spool_writes);
        let all = [
            ("database", &checks.database),
            ("schema", &checks.schema),
            ("spool", &spool),
            ("writer", &checks.writer),
        ];
        let data_path = checks.database == Check::Ok
            && checks.schema == Check::Ok
            && checks.writer == Check::Ok;
        let verified = self.verified.load(Ordering::SeqCst);
        let (status, ready) = if spool != Check::Ok || !self.live() {
            ("failing", false)
        } else if !verified {
            ("degraded", false)
        } else if !data_path {
            ("degraded", !strict)
        } else {
            ("ok", true)
        };
        let report = Readiness {
            status,
            checks: all.iter().map(|(n, c)| (*n, c.render())).collect(),
        };
        (report, ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_accounts_are_masked_in_readiness() {
        let check = Check::Failed(
            "connect: Access denied for user 'usage'@'10.0.0.7' (using password: YES)".into(),
        );
        assert_eq!(
            check.render(),
            "failed: connect: Access denied for user '***'@'***' (using password: YES)"
        );
        assert_eq!(
            Check::Failed("no quotes".into()).render(),
            "failed: no quotes"
        );
    }

    #[test]
    fn the_policy_keeps_a_verified_replica_in_service_through_an_outage() {
        let health = Health::new();
        assert_eq!(health.readiness(false).0.status, "degraded");
        assert!(!health.readiness(false).1, "not ready before verification");
        health.set_database(Check::Ok);
        health.set_schema(Check::Ok);
        health.set_verified();
        assert_eq!(health.readiness(false), (health.readiness(true).0, true));
        assert_eq!(health.readiness(false).0.status, "ok");

        health.set_database(Check::Failed("connection refused".into()));
        let (report, ready) = health.readiness(false);
        assert_eq!((report.status, ready), ("degraded", true));
        assert!(!health.readiness(true).1, "strict: not ready");

        health.set_database(Check::Ok);
        health.set_spool_writes(Check::Failed("No space left on device".into()));
        let (report, ready) = health.readiness(false);
        assert_eq!((report.status, ready), ("failing", false));
        assert!(
            report.checks["spool"].contains("No space left"),
            "{report:?}"
        );
        health.set_spool_writes(Check::Ok);
        assert!(health.readiness(false).1);

        health.set_writer_dead("stopped after repeated panics".into());
        assert!(!health.live());
        assert_eq!(health.readiness(false).0.status, "failing");
    }
}
