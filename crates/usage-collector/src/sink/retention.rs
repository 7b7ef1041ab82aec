//! Retention: deleting rows older than a cutoff, in small batches.
//!
//! Each statement deletes at most `batch_size` rows, oldest first, along the table's time index,
//! so no statement holds its row locks for long and the writer's inserts interleave with the
//! sweep. A table is done when a statement deletes fewer rows than the batch.
//!
//! What "older" means per table:
//!
//! - the event tables (`page_visits`, `program_executions`, `feature_usage`, `usage_events`):
//!   their `timestamp`;
//! - `ide_sessions`: the session's last sign of life — its `last_activity`, and its `end_time`
//!   when it ended — must both be older (a session that never ended goes once it has been
//!   inactive that long). `start_time < cutoff` is implied and lets the start-time index narrow
//!   the scan (the table has no index on the end or activity times);
//! - `dead_letters`: `created_at`.
//!
//! With several collectors on one database, only one sweeps at a time: a sweep first takes the
//! `retention` lease, a row of `collector_leases` with a holder and an expiry, by one
//! conditional UPDATE (it matches only when the lease has expired or is already this
//! collector's), renews it after every DELETE, and releases it at the end by moving its expiry
//! into the past. The database's clock decides expiry. A collector that finds the lease held
//! skips the round; a sweep that finds its lease taken (it stalled past the expiry and another
//! collector took over) stops at once. A sweep cut short (a timeout, a shutdown, a crash)
//! leaves the lease to expire on its own, [`LEASE_TTL_STATEMENTS`] statement timeouts later.
//!
//! Unlike `GET_LOCK`, which an earlier version held and which lives in one server's memory, a
//! row is replicated: collectors on different nodes of a Galera cluster meet on it. There, two
//! collectors taking an expired lease at the same moment meet as a certification conflict on
//! their UPDATEs; the server retries the loser's (`wsrep_retry_autocommit`), which then finds
//! the lease held, or reports the conflict, which counts as finding it held: either way
//! exactly one holds it. Every statement runs on the pool (nothing is tied to one connection),
//! so the writer keeps SQLite's single connection between statements.

use std::time::Duration;

use sqlx::{Database, Encode, Executor, IntoArguments, Type};
use time::{OffsetDateTime, PrimitiveDateTime};

use super::error::SinkError;
use super::handle::{PoolRef, Sink};

/// The built-in tables retention applies to, in the order a sweep visits them; the tracking
/// plan's own event tables are swept too, by their `timestamp` ([`retained`]).
pub const TABLES: [&str; 6] = [
    "page_visits",
    "program_executions",
    "feature_usage",
    "usage_events",
    "ide_sessions",
    "dead_letters",
];

/// The collector's own tables no sweep touches.
pub const NEVER_SWEPT: [&str; 6] = [
    "collector_heartbeats",
    "collector_leases",
    "daily_usage_by_service",
    "schema_releases",
    "_sqlx_migrations",
    "catalog_columns",
];

/// The tables a sweep visits for a catalogue of `event_tables`: each event table (built-in or
/// the plan's), then `ide_sessions` and `dead_letters`.
pub fn retained(event_tables: impl IntoIterator<Item = &'static str>) -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = event_tables
        .into_iter()
        .filter(|t| !NEVER_SWEPT.contains(t) && !matches!(*t, "ide_sessions" | "dead_letters"))
        .collect();
    tables.extend(["ide_sessions", "dead_letters"]);
    tables
}

/// The lease row one sweep at a time holds.
pub const LEASE: &str = "retention";

/// A lease lasts this many statement timeouts past its last renewal: a live sweep renews it
/// after every statement (each bounded by one timeout), so only a sweep that stopped, or
/// stalled for longer, loses it.
pub const LEASE_TTL_STATEMENTS: u32 = 3;

/// Rows a sweep deleted from one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// The table.
    pub table: &'static str,
    /// Rows deleted.
    pub rows: u64,
    /// DELETE statements run.
    pub statements: u32,
}

/// What one sweep did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    /// The sweep ran: what it deleted from each table of the plan, in order.
    Swept(Vec<Deleted>),
    /// Another collector holds the retention lease; nothing was done.
    LockHeld,
    /// Another collector took the lease while this sweep ran (it stalled past the lease's
    /// expiry): it stopped after what it had deleted.
    LeaseLost(Vec<Deleted>),
    /// The sink stores nothing.
    Nothing,
}

/// When a sweep held the lease, by this machine's clock: from just after the database granted
/// it to just before the release was sent. Another collector's hold on the same database,
/// read the same way, never overlaps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The lease was granted before this.
    pub from: OffsetDateTime,
    /// The last DELETE had finished, and the release not yet been sent, at this.
    pub until: OffsetDateTime,
}

/// Who sweeps, and how long its lease lasts.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The lease's holder: the collector's instance name and a suffix of its process.
    pub holder: String,
    /// How long the lease lasts past each renewal.
    pub ttl: Duration,
}

/// A sweep stopped by a failed statement, with what it had deleted until then.
#[derive(Debug)]
pub struct SweepError {
    /// The failure.
    pub error: SinkError,
    /// Tables finished, and the one in progress, before the failure.
    pub deleted: Vec<Deleted>,
    /// When the lease was granted, if it was.
    pub held_from: Option<OffsetDateTime>,
}

/// The lease's statements in one dialect (binds: take — holder, name, holder; renew and
/// release — name, holder).
pub(crate) struct LeaseSql {
    pub(crate) take: String,
    pub(crate) renew: String,
    pub(crate) release: String,
}

impl LeaseSql {
    /// `now` is the database's clock as an expression, `later` it plus the lease's life, and
    /// `expired` a time long past.
    fn new(now: &str, later: &str, expired: &str) -> Self {
        Self {
            take: format!(
                "UPDATE collector_leases SET holder = ?, expires_at = {later} \
                 WHERE name = ? AND (expires_at < {now} OR holder = ?)"
            ),
            renew: format!(
                "UPDATE collector_leases SET expires_at = {later} WHERE name = ? AND holder = ?"
            ),
            release: format!(
                "UPDATE collector_leases SET holder = '', expires_at = {expired} \
                 WHERE name = ? AND holder = ?"
            ),
        }
    }

    pub(crate) fn mysql(ttl: Duration) -> Self {
        Self::new(
            "UTC_TIMESTAMP(6)",
            &format!(
                "DATE_ADD(UTC_TIMESTAMP(6), INTERVAL {} MICROSECOND)",
                ttl.as_micros()
            ),
            "'1970-01-01 00:00:00'",
        )
    }

    fn sqlite(ttl: Duration) -> Self {
        Self::new(
            "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            &format!(
                "strftime('%Y-%m-%d %H:%M:%f', 'now', '+{:.3} seconds')",
                ttl.as_secs_f64()
            ),
            "'1970-01-01 00:00:00.000'",
        )
    }
}

/// Rows a statement changed (matched, for an UPDATE: the driver asks for found rows).
trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::mysql::MySqlQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// The condition selecting a table's expired rows (binds: the cutoff, as often as `binds`), and
/// the columns the oldest come first by.
fn expired(table: &str) -> Option<(&'static str, usize, &'static str)> {
    Some(match table {
        _ if NEVER_SWEPT.contains(&table) => return None,
        "ide_sessions" => (
            "start_time < ? AND last_activity < ? AND (end_time IS NULL OR end_time < ?)",
            3,
            "start_time",
        ),
        "dead_letters" => ("created_at < ?", 1, "created_at"),
        // Every event table, built-in or the tracking plan's, has `timestamp` and its index.
        _ => ("`timestamp` < ?", 1, "`timestamp`"),
    })
}

/// One batch's DELETE on MySQL: ordered by time and then the primary key, so it is
/// deterministic (safe for statement-based replication) and walks the time index.
fn mysql_delete(table: &str) -> Option<(String, usize)> {
    let (condition, binds, order) = expired(table)?;
    Some((
        format!("DELETE FROM `{table}` WHERE {condition} ORDER BY {order}, id LIMIT ?"),
        binds,
    ))
}

/// One batch's DELETE on SQLite, which lacks `DELETE … LIMIT` unless built with it.
fn sqlite_delete(table: &str) -> Option<(String, usize)> {
    let (condition, binds, order) = expired(table)?;
    Some((
        format!(
            "DELETE FROM `{table}` WHERE rowid IN \
             (SELECT rowid FROM `{table}` WHERE {condition} ORDER BY {order} LIMIT ?)"
        ),
        binds,
    ))
}

/// The sweep's settings for one run.
struct Run<'a> {
    plan: &'a [(&'static str, PrimitiveDateTime)],
    batch_size: u32,
    statement_timeout: Duration,
    lease: &'a Lease,
}

impl Sink {
    /// Deletes, from each table of `plan`, the rows older than its cutoff, at most
    /// `batch_size` rows per statement, each statement within `statement_timeout`, holding
    /// `lease` throughout. `on_batch(table, rows)` hears each statement's count as it happens.
    /// With the outcome comes when the lease was held, if it was.
    pub async fn sweep(
        &self,
        plan: &[(&'static str, PrimitiveDateTime)],
        batch_size: u32,
        statement_timeout: Duration,
        lease: &Lease,
        mut on_batch: impl FnMut(&'static str, u64),
    ) -> Result<(Sweep, Option<Held>), SweepError> {
        let run = Run {
            plan,
            batch_size,
            statement_timeout,
            lease,
        };
        let mut deleted = Vec::new();
        let mut held_from = None;
        let result = match self.pool() {
            PoolRef::MySql(pool) => {
                self.sweep_on(
                    pool,
                    &run,
                    &LeaseSql::mysql(lease.ttl),
                    mysql_delete,
                    &mut on_batch,
                    &mut deleted,
                    &mut held_from,
                )
                .await
            }
            PoolRef::Sqlite(pool) => {
                self.sweep_on(
                    pool,
                    &run,
                    &LeaseSql::sqlite(lease.ttl),
                    sqlite_delete,
                    &mut on_batch,
                    &mut deleted,
                    &mut held_from,
                )
                .await
            }
            PoolRef::Blackhole => return Ok((Sweep::Nothing, None)),
        };
        result.map_err(|error| SweepError {
            error,
            deleted,
            held_from,
        })
    }

    /// One sweep on either database: take the lease, delete table by table in bounded
    /// statements renewing the lease after each, release it.
    #[allow(clippy::too_many_arguments)]
    async fn sweep_on<DB>(
        &self,
        pool: &sqlx::Pool<DB>,
        run: &Run<'_>,
        sql: &LeaseSql,
        delete: fn(&str) -> Option<(String, usize)>,
        on_batch: &mut impl FnMut(&'static str, u64),
        deleted: &mut Vec<Deleted>,
        held_from: &mut Option<OffsetDateTime>,
    ) -> Result<(Sweep, Option<Held>), SinkError>
    where
        DB: Database,
        DB::QueryResult: Affected,
        for<'c> &'c sqlx::Pool<DB>: Executor<'c, Database = DB>,
        for<'q> DB::Arguments: IntoArguments<DB>,
        for<'q> &'q str: Encode<'q, DB> + Type<DB>,
        i64: for<'q> Encode<'q, DB> + Type<DB>,
        PrimitiveDateTime: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let holder = run.lease.holder.as_str();
        let timeout = run.statement_timeout;
        let take = sqlx::query(sqlx::AssertSqlSafe(sql.take.clone()))
            .bind(holder)
            .bind(LEASE)
            .bind(holder);
        match self
            .timed("taking the retention lease", timeout, take.execute(pool))
            .await
        {
            Ok(result) if result.affected() == 1 => {}
            Ok(_) => return Ok((Sweep::LockHeld, None)),
            // Two collectors on two cluster nodes took it at the same moment; the other won.
            Err(e) if e.reason == "certification_conflict" => return Ok((Sweep::LockHeld, None)),
            Err(e) => return Err(e),
        }
        let from = OffsetDateTime::now_utc();
        *held_from = Some(from);
        for &(table, cutoff) in run.plan {
            let Some((statement, binds)) = delete(table) else {
                continue;
            };
            deleted.push(Deleted {
                table,
                rows: 0,
                statements: 0,
            });
            loop {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(statement.clone()));
                for _ in 0..binds {
                    query = query.bind(cutoff);
                }
                let query = query.bind(i64::from(run.batch_size));
                let rows = self
                    .timed("a retention DELETE", timeout, query.execute(pool))
                    .await?
                    .affected();
                record(deleted, on_batch, rows);
                // Still ours? A sweep that stalled past the expiry stops here.
                let renew = sqlx::query(sqlx::AssertSqlSafe(sql.renew.clone()))
                    .bind(LEASE)
                    .bind(holder);
                match self
                    .timed("renewing the retention lease", timeout, renew.execute(pool))
                    .await
                {
                    Ok(result) if result.affected() == 1 => {}
                    Ok(_) => return Ok((Sweep::LeaseLost(std::mem::take(deleted)), None)),
                    Err(e) if e.reason == "certification_conflict" => {
                        return Ok((Sweep::LeaseLost(std::mem::take(deleted)), None));
                    }
                    Err(e) => return Err(e),
                }
                if rows < u64::from(run.batch_size) {
                    break;
                }
            }
        }
        let until = OffsetDateTime::now_utc();
        let release = sqlx::query(sqlx::AssertSqlSafe(sql.release.clone()))
            .bind(LEASE)
            .bind(holder);
        if let Err(e) = self
            .timed(
                "releasing the retention lease",
                timeout,
                release.execute(pool),
            )
            .await
        {
            // It expires on its own; until then the other collectors skip their rounds.
            tracing::warn!(error = %e.message, reason = e.reason, ttl_secs = run.lease.ttl.as_secs(), "cannot release the retention lease; it expires on its own");
        }
        Ok((
            Sweep::Swept(std::mem::take(deleted)),
            Some(Held { from, until }),
        ))
    }

    /// `operation` within `timeout`, its failure described.
    async fn timed<T>(
        &self,
        what: &str,
        timeout: Duration,
        operation: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, SinkError> {
        let began = self.moves();
        match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(began, &e)),
            Err(_) => Err(SinkError::timed_out(what, timeout)),
        }
    }
}

/// Adds one statement's `rows` to the table in progress (the last of `deleted`).
fn record(deleted: &mut [Deleted], on_batch: &mut impl FnMut(&'static str, u64), rows: u64) {
    if let Some(current) = deleted.last_mut() {
        current.rows += rows;
        current.statements += 1;
        on_batch(current.table, rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_retained_table_has_its_statements() {
        for table in TABLES {
            assert!(mysql_delete(table).is_some(), "{table}");
            assert!(sqlite_delete(table).is_some(), "{table}");
        }
        assert!(mysql_delete("collector_heartbeats").is_none());
        assert!(mysql_delete("collector_leases").is_none());
        assert_eq!(
            mysql_delete("debugger_steps").unwrap().0,
            "DELETE FROM `debugger_steps` WHERE `timestamp` < ? ORDER BY `timestamp`, id LIMIT ?",
            "a table of the tracking plan"
        );
        assert_eq!(
            retained(["page_visits", "debugger_steps", "usage_events"]),
            [
                "page_visits",
                "debugger_steps",
                "usage_events",
                "ide_sessions",
                "dead_letters"
            ]
        );
    }

    #[test]
    fn each_statement_is_bounded_and_oldest_first() {
        let (sql, binds) = mysql_delete("page_visits").unwrap();
        assert_eq!(
            sql,
            "DELETE FROM `page_visits` WHERE `timestamp` < ? ORDER BY `timestamp`, id LIMIT ?"
        );
        assert_eq!(binds, 1);
        let (sql, binds) = sqlite_delete("ide_sessions").unwrap();
        assert_eq!(
            sql,
            "DELETE FROM `ide_sessions` WHERE rowid IN (SELECT rowid FROM `ide_sessions` WHERE \
             start_time < ? AND last_activity < ? AND (end_time IS NULL OR end_time < ?) \
             ORDER BY start_time LIMIT ?)"
        );
        assert_eq!(binds, 3);
    }
}
