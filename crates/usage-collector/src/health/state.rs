//! Readiness: is the data path working, and if not, why.
//!
//! Each check holds `ok`, `pending: …` or `failed: …` with the reason (the database's own error
//! text, secrets already removed).
//!
//! - `ok` (200): every check passes.
//! - `degraded`: events are still accepted into the spool, but the data path is impaired. Not
//!   ready (503) when the database or the schema check fails, so traffic moves to a healthy
//!   collector; ready (200) when only the last batch write failed.
//! - `failing` (503): the spool cannot take events (near its cap, or shutting down).

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
    fn render(&self) -> String {
        match self {
            Check::Pending(why) => format!("pending: {why}"),
            Check::Ok => "ok".to_owned(),
            Check::Failed(why) => format!("failed: {why}"),
        }
    }
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
}

/// Share of the spool's cap above which the collector reports failing.
pub const SPOOL_HIGH_WATER: f64 = 0.9;

/// Shared readiness state, updated by verification, the writer and the receiver.
#[derive(Clone)]
pub struct Health {
    checks: Arc<RwLock<Checks>>,
    /// The spool's (requests, bytes) and its cap, for the spool check.
    spool: Arc<std::sync::OnceLock<(super::metrics::SpoolGauge, u64)>>,
    closing: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("checks", &self.checks)
            .field("closing", &self.closing)
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
            })),
            spool: Arc::default(),
            closing: Arc::default(),
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
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once shutdown has begun.
    pub fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True once startup verification has passed.
    pub fn schema_verified(&self) -> bool {
        self.checks.read().unwrap_or_else(|e| e.into_inner()).schema == Check::Ok
    }

    fn spool_check(&self) -> Check {
        if self.closing() {
            return Check::Failed("shutting down: new requests are refused".to_owned());
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

    /// True while the database check passes.
    pub fn database_ok(&self) -> bool {
        self.checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .database
            == Check::Ok
    }

    /// The readiness report and whether it means ready.
    pub fn readiness(&self) -> (Readiness, bool) {
        let spool = self.spool_check();
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let all = [
            ("database", &checks.database),
            ("schema", &checks.schema),
            ("spool", &spool),
            ("writer", &checks.writer),
        ];
        let data_path = checks.database == Check::Ok && checks.schema == Check::Ok;
        let (status, ready) = if spool != Check::Ok {
            ("failing", false)
        } else if !data_path {
            ("degraded", false)
        } else if checks.writer != Check::Ok {
            ("degraded", true)
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
