//! The retention sweeper: deletes rows older than their table's retention, first once startup
//! verification has passed, then every `retention.interval_secs`.
//!
//! Each table's retention is its `retention.tables` override, else `retention.days`; 0 keeps
//! the table forever, and with every table kept forever no sweeper runs. The deleting itself —
//! bounded batches, one collector at a time — is [`crate::sink::retention`]; this stage decides
//! when and how far back, counts `usage_collector_rows_deleted_total{table}` as each batch
//! commits, and logs each sweep once at INFO with its totals per table, its lease holder and
//! when it held the lease (`held_from`, `held_until`: two collectors' holds never overlap). A
//! failed sweep is
//! logged and tried again at the next interval; it never touches readiness (nothing accepted
//! is at risk, and the database checks report an outage already).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::{OffsetDateTime, PrimitiveDateTime};

use crate::catalog::TableKind;
use crate::config::RetentionSettings;
use crate::health::Metrics;
use crate::health::metrics::TableLabels;
use crate::sink::Sink;
use crate::sink::retention::{Deleted, LEASE_TTL_STATEMENTS, Lease, Sweep, SweepError, retained};

/// Deletes expired rows from one sink.
#[derive(Debug, Clone)]
pub struct Retention {
    sink: Sink,
    metrics: Arc<Metrics>,
    settings: RetentionSettings,
    statement_timeout: Duration,
    /// The retention lease's holder name and life.
    lease: Lease,
}

/// A lease holder name unique to this process: `instance`, then a random suffix (two
/// processes started with the same instance name, as a restarted pod is, hold leases apart).
fn holder(instance: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{instance}-{}", &suffix[..8])
}

impl Retention {
    /// A sweeper for `sink` with `settings`, each DELETE bounded by `statement_timeout`.
    pub fn new(
        sink: Sink,
        metrics: Arc<Metrics>,
        settings: RetentionSettings,
        statement_timeout: Duration,
    ) -> Self {
        Self {
            sink,
            metrics,
            settings,
            statement_timeout,
            lease: Lease {
                holder: holder("usage-collector"),
                ttl: statement_timeout * LEASE_TTL_STATEMENTS,
            },
        }
    }

    /// Holds the lease as this collector's `instance` (with a suffix of this process).
    pub fn with_instance(mut self, instance: &str) -> Self {
        self.lease.holder = holder(instance);
        self
    }

    /// The name this sweeper holds the retention lease under.
    pub fn holder(&self) -> &str {
        &self.lease.holder
    }

    /// True when some table has a retention (otherwise there is nothing to sweep).
    pub fn enabled(settings: &RetentionSettings) -> bool {
        settings.days > 0 || settings.tables.0.iter().any(|(_, days)| *days > 0)
    }

    /// Each table with a retention, and the time before which its rows are deleted, as of
    /// `now` (UTC, as the rows are written).
    pub fn plan(
        settings: &RetentionSettings,
        tables: &[&'static str],
        now: OffsetDateTime,
    ) -> Vec<(&'static str, PrimitiveDateTime)> {
        let now = PrimitiveDateTime::new(now.date(), now.time());
        tables
            .iter()
            .filter_map(|&table| match days(settings, table) {
                0 => None,
                // A retention reaching before year -9999 keeps everything.
                d => now
                    .checked_sub(time::Duration::days(i64::from(d)))
                    .map(|cutoff| (table, cutoff)),
            })
            .collect()
    }

    /// One sweep as of `now`: deletes, counts and logs. `Ok(Sweep::LockHeld)` when another
    /// collector holds the lease.
    pub async fn sweep_at(&self, now: OffsetDateTime) -> Result<Sweep, SweepError> {
        // The catalogue in force: a tracking plan read again brings its tables.
        let catalog = self.sink.catalog();
        let tables = retained(
            catalog
                .tables()
                .iter()
                .filter(|t| t.kind == TableKind::Events)
                .map(|t| t.name),
        );
        let plan = Self::plan(&self.settings, &tables, now);
        let started = Instant::now();
        let metrics = &self.metrics;
        let result = self
            .sink
            .sweep(
                &plan,
                self.settings.batch_size,
                self.statement_timeout,
                &self.lease,
                |table, rows| {
                    metrics
                        .rows_deleted
                        .get_or_create(&TableLabels { table })
                        .inc_by(rows);
                },
            )
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let holder = self.lease.holder.as_str();
        let time = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        match &result {
            Ok((Sweep::Swept(deleted), held)) => {
                tracing::info!(
                    holder,
                    held_from = held.map(|h| time(h.from)),
                    held_until = held.map(|h| time(h.until)),
                    deleted = %per_table(deleted),
                    rows = deleted.iter().map(|d| d.rows).sum::<u64>(),
                    statements = deleted.iter().map(|d| d.statements).sum::<u32>(),
                    elapsed_ms,
                    "retention sweep done: rows deleted per table"
                );
            }
            Ok((Sweep::LockHeld, _)) => {
                tracing::debug!(
                    holder,
                    "retention sweep skipped: another collector holds the lease"
                );
            }
            Ok((Sweep::LeaseLost(deleted), _)) => {
                tracing::warn!(
                    holder,
                    deleted = %per_table(deleted),
                    elapsed_ms,
                    "retention sweep stopped: another collector took the lease while this one \
                     stalled (rows deleted until then per table)"
                );
            }
            Ok((Sweep::Nothing, _)) => {}
            Err(e) => {
                tracing::warn!(
                    holder,
                    held_from = e.held_from.map(time),
                    error = %e.error,
                    reason = e.error.reason,
                    deleted = %per_table(&e.deleted),
                    elapsed_ms,
                    retry_in_secs = self.settings.interval.as_secs(),
                    "retention sweep failed (rows deleted until then per table); trying again at the next interval"
                );
            }
        }
        result.map(|(sweep, _)| sweep)
    }

    /// Waits for `verified`, then sweeps at once and every interval, until dropped (aborted).
    pub async fn run(self, verified: impl Future<Output = bool>) {
        if !verified.await {
            return;
        }
        let mut tick = tokio::time::interval(self.settings.interval);
        // After a long sweep, wait a whole interval again rather than sweep back to back.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // The outcome is logged and counted; a failure waits for the next round.
            let _outcome = self.sweep_at(OffsetDateTime::now_utc()).await;
        }
    }
}

/// `table`'s retention in days (0: forever).
fn days(settings: &RetentionSettings, table: &str) -> u32 {
    settings.tables.get(table).unwrap_or(settings.days)
}

/// The rows a sweep deleted, as `table=rows` for every table it deleted from (the tracking
/// plan's tables included), in the order swept.
fn per_table(deleted: &[Deleted]) -> String {
    let mut totals: Vec<(&str, u64)> = Vec::new();
    for d in deleted.iter().filter(|d| d.rows > 0) {
        match totals.iter_mut().find(|(table, _)| *table == d.table) {
            Some((_, rows)) => *rows += d.rows,
            None => totals.push((d.table, d.rows)),
        }
    }
    let listed: Vec<String> = totals
        .iter()
        .map(|(table, rows)| format!("{table}={rows}"))
        .collect();
    listed.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, TableDays};

    #[test]
    fn a_sweeps_log_names_every_table_it_deleted_from() {
        let deleted = |table, rows| Deleted {
            table,
            rows,
            statements: 1,
        };
        let sweep = [
            deleted("page_visits", 100),
            deleted("debugger_steps", 7),
            deleted("feature_usage", 0),
            deleted("page_visits", 20),
        ];
        assert_eq!(per_table(&sweep), "page_visits=120 debugger_steps=7");
        assert_eq!(per_table(&[]), "");
    }

    #[test]
    fn overrides_win_and_zero_keeps_forever() {
        let mut settings = Settings::defaults().retention;
        assert!(!Retention::enabled(&settings));
        let now = time::macros::datetime!(2025-03-10 12:00:00 UTC);
        assert!(Retention::plan(&settings, &crate::sink::retention::TABLES, now).is_empty());
        settings.tables = TableDays(vec![("dead_letters".to_owned(), 7)]);
        assert!(Retention::enabled(&settings));
        assert_eq!(
            Retention::plan(&settings, &crate::sink::retention::TABLES, now),
            vec![("dead_letters", time::macros::datetime!(2025-03-03 12:00:00))]
        );
        settings.days = 30;
        settings.tables = TableDays(vec![
            ("page_visits".to_owned(), 1),
            ("ide_sessions".to_owned(), 0),
        ]);
        let plan = Retention::plan(&settings, &crate::sink::retention::TABLES, now);
        assert_eq!(plan.len(), 5);
        assert_eq!(
            plan[0],
            ("page_visits", time::macros::datetime!(2025-03-09 12:00:00))
        );
        assert!(plan.iter().all(|(t, _)| *t != "ide_sessions"));
        assert!(plan.contains(&("usage_events", time::macros::datetime!(2025-02-08 12:00:00))));
        settings.days = u32::MAX;
        assert!(Retention::plan(&settings, &crate::sink::retention::TABLES, now).len() == 1);
    }
}
