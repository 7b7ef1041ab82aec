//! The tracker's own warnings — export failing, still failing, working again, events refused,
//! events left unsent at shutdown — and where they go: to stderr unless the application routes
//! them with [`TrackerBuilder::on_warning`](crate::TrackerBuilder::on_warning).
//!
//! They never go through the tracker's export: a warning about a failing export must not wait in
//! the queue of that export, and must not loop back into it.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::health::Stats;

/// What a [`Warning`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// Export started failing, or events were dropped because the queue was full.
    Degraded,
    /// The problem goes on: a reminder, at most once per [`WARN_EVERY`](crate::health::WARN_EVERY).
    StillDegraded,
    /// Export works again.
    Recovered,
    /// Usage events were refused because a value the collector requires was missing or empty.
    InvalidEvents,
    /// The shutdown deadline passed with events not yet sent.
    ShutdownDeadline,
    /// A configured header is not valid gRPC metadata and is not sent.
    InvalidHeader,
}

/// One warning from the tracker: what happened, in words, with the counts at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// The message, naming the endpoint where there is one (never a header value).
    pub message: String,
    /// The tracker's counts when it was raised.
    pub stats: Stats,
}

impl Warning {
    /// Whether this is good news (export works again) rather than a problem.
    pub fn is_recovery(&self) -> bool {
        self.kind == WarningKind::Recovered
    }
}

/// The line written to stderr: `usage-tracker WARN: <message>; events recorded …, …`.
impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.kind {
            WarningKind::Recovered => "INFO",
            WarningKind::StillDegraded => "WARN (still)",
            _ => "WARN",
        };
        let s = &self.stats;
        write!(
            f,
            "usage-tracker {label}: {}; events recorded {}, exported {}, failed {}, dropped {}",
            self.message, s.recorded, s.exported, s.failed, s.dropped
        )?;
        if s.invalid > 0 {
            write!(f, ", invalid {}", s.invalid)?;
        }
        Ok(())
    }
}

/// The application's handler for warnings.
pub(crate) type Handler = Arc<dyn Fn(&Warning) + Send + Sync>;

/// Where warnings go: the application's handler, else stderr.
#[derive(Clone, Default)]
pub(crate) struct Warnings {
    handler: Option<Handler>,
}

impl fmt::Debug for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.handler.is_some() {
            "Warnings(handler)"
        } else {
            "Warnings(stderr)"
        })
    }
}

impl Warnings {
    pub(crate) fn to(handler: Handler) -> Self {
        Self {
            handler: Some(handler),
        }
    }

    /// Hands the warning to the handler. A handler that panics must not stop the export
    /// thread it runs on: the warning then goes to stderr after all.
    pub(crate) fn emit(&self, warning: Warning) {
        let handled = self
            .handler
            .as_ref()
            .is_some_and(|handler| catch_unwind(AssertUnwindSafe(|| handler(&warning))).is_ok());
        if !handled {
            eprintln!("{warning}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning() -> Warning {
        Warning {
            kind: WarningKind::Degraded,
            message: "cannot export usage events to http://x:4317: refused".to_owned(),
            stats: Stats {
                recorded: 3,
                failed: 3,
                ..Stats::default()
            },
        }
    }

    #[test]
    fn the_stderr_line_has_the_message_and_the_counts() {
        assert_eq!(
            warning().to_string(),
            "usage-tracker WARN: cannot export usage events to http://x:4317: refused; events \
             recorded 3, exported 0, failed 3, dropped 0"
        );
    }

    #[test]
    fn a_panicking_handler_does_not_take_the_caller_down() {
        let warnings = Warnings::to(Arc::new(|_: &Warning| panic!("handler bug")));
        warnings.emit(warning());
    }
}
