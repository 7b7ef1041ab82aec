//! Readiness: is the data path working, and if not, why.
//!
//! Each check holds `ok`, `pending: …` or `failed: …` with the reason (the database's own error
//! text, secrets already removed). `ok`: every check passes. `failing` (not ready): the
//! database or the schema check fails, and events are refused. `degraded` (still ready): the
//! last batch write failed for another reason; events are still taken.

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

/// Shared readiness state, updated by verification and the writer.
#[derive(Debug, Clone)]
pub struct Health {
    checks: Arc<RwLock<Checks>>,
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

    /// True when events can be accepted: the database answers and the schema is verified.
    pub fn accepting(&self) -> Result<(), String> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        for (name, check) in [("database", &checks.database), ("schema", &checks.schema)] {
            if *check != Check::Ok {
                return Err(format!("{name} {}", check.render()));
            }
        }
        Ok(())
    }

    /// The readiness report.
    pub fn readiness(&self) -> Readiness {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let all = [
            ("database", &checks.database),
            ("schema", &checks.schema),
            ("writer", &checks.writer),
        ];
        let status = if all.iter().all(|(_, c)| **c == Check::Ok) {
            "ok"
        } else if checks.database != Check::Ok || checks.schema != Check::Ok {
            "failing"
        } else {
            "degraded"
        };
        Readiness {
            status,
            checks: all.iter().map(|(n, c)| (*n, c.render())).collect(),
        }
    }
}
