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
//! With several collectors on one MySQL database only one sweeps at a time: the sweep holds
//! `GET_LOCK` (named after the database, so collectors of different databases on one server do
//! not wait on each other) on its own pooled connection, and one that finds it taken skips the
//! round. That connection is closed after the sweep rather than returned to the pool, so a
//! sweep cut short (a timeout, a shutdown) cannot leave the lock held by a pooled connection.
//! SQLite has one process: each statement takes the single connection on its own, so the writer
//! gets it between batches.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use time::PrimitiveDateTime;

use super::error::SinkError;
use super::handle::{PoolRef, Sink};

/// The tables retention applies to, in the order a sweep visits them.
pub const TABLES: [&str; 6] = [
    "page_visits",
    "program_executions",
    "feature_usage",
    "usage_events",
    "ide_sessions",
    "dead_letters",
];

/// The MySQL named lock one sweep at a time holds: `usage_collector_retention.<database>`, cut
/// to the 64 characters a lock name may have.
const LOCK_NAME: &str = "LEFT(CONCAT('usage_collector_retention.', COALESCE(DATABASE(), '')), 64)";

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
    /// Another collector holds the retention lock; nothing was done.
    LockHeld,
    /// The sink stores nothing.
    Nothing,
}

/// A sweep stopped by a failed statement, with what it had deleted until then.
#[derive(Debug)]
pub struct SweepError {
    /// The failure.
    pub error: SinkError,
    /// Tables finished, and the one in progress, before the failure.
    pub deleted: Vec<Deleted>,
}

/// The condition selecting a table's expired rows (binds: the cutoff, as often as `binds`), and
/// the columns the oldest come first by.
fn expired(table: &str) -> Option<(&'static str, usize, &'static str)> {
    Some(match table {
        "page_visits" | "program_executions" | "feature_usage" | "usage_events" => {
            ("`timestamp` < ?", 1, "`timestamp`")
        }
        "ide_sessions" => (
            "start_time < ? AND last_activity < ? AND (end_time IS NULL OR end_time < ?)",
            3,
            "start_time",
        ),
        "dead_letters" => ("created_at < ?", 1, "created_at"),
        _ => return None,
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

impl Sink {
    /// Deletes, from each table of `plan`, the rows older than its cutoff, at most
    /// `batch_size` rows per statement, each statement within `statement_timeout`.
    /// `on_batch(table, rows)` hears each statement's count as it happens.
    pub async fn sweep(
        &self,
        plan: &[(&'static str, PrimitiveDateTime)],
        batch_size: u32,
        statement_timeout: Duration,
        mut on_batch: impl FnMut(&'static str, u64),
    ) -> Result<Sweep, SweepError> {
        let mut deleted = Vec::new();
        let result = match self.pool() {
            PoolRef::MySql(pool) => {
                self.sweep_mysql(
                    pool,
                    plan,
                    batch_size,
                    statement_timeout,
                    &mut on_batch,
                    &mut deleted,
                )
                .await
            }
            PoolRef::Sqlite(pool) => {
                self.sweep_sqlite(
                    pool,
                    plan,
                    batch_size,
                    statement_timeout,
                    &mut on_batch,
                    &mut deleted,
                )
                .await
            }
            PoolRef::Blackhole => return Ok(Sweep::Nothing),
        };
        result.map_err(|error| SweepError { error, deleted })
    }

    async fn sweep_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        plan: &[(&'static str, PrimitiveDateTime)],
        batch_size: u32,
        statement_timeout: Duration,
        on_batch: &mut impl FnMut(&'static str, u64),
        deleted: &mut Vec<Deleted>,
    ) -> Result<Sweep, SinkError> {
        for &(table, cutoff) in plan {
            let Some((sql, binds)) = sqlite_delete(table) else {
                continue;
            };
            deleted.push(Deleted {
                table,
                rows: 0,
                statements: 0,
            });
            loop {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for _ in 0..binds {
                    query = query.bind(cutoff);
                }
                let query = query.bind(i64::from(batch_size));
                // On the pool, not one held connection: the writer gets SQLite's only
                // connection between batches.
                let rows = self
                    .timed("a retention DELETE", statement_timeout, query.execute(pool))
                    .await?
                    .rows_affected();
                record(deleted, on_batch, rows);
                if rows < u64::from(batch_size) {
                    break;
                }
            }
        }
        Ok(Sweep::Swept(std::mem::take(deleted)))
    }

    async fn sweep_mysql(
        &self,
        pool: &sqlx::MySqlPool,
        plan: &[(&'static str, PrimitiveDateTime)],
        batch_size: u32,
        statement_timeout: Duration,
        on_batch: &mut impl FnMut(&'static str, u64),
        deleted: &mut Vec<Deleted>,
    ) -> Result<Sweep, SinkError> {
        let mut conn: PoolConnection<sqlx::MySql> = self
            .timed(
                "a connection for retention",
                statement_timeout,
                pool.acquire(),
            )
            .await?;
        // Closed, never handed back to the pool, once the lock may be held: a GET_LOCK that
        // timed out on this side may still have been granted.
        conn.close_on_drop();
        let get_lock = format!("SELECT GET_LOCK({LOCK_NAME}, 0)");
        let got: Option<i64> = self
            .timed(
                "GET_LOCK",
                statement_timeout,
                sqlx::query_scalar(sqlx::AssertSqlSafe(get_lock)).fetch_one(&mut *conn),
            )
            .await?;
        if got != Some(1) {
            return Ok(Sweep::LockHeld);
        }
        for &(table, cutoff) in plan {
            let Some((sql, binds)) = mysql_delete(table) else {
                continue;
            };
            deleted.push(Deleted {
                table,
                rows: 0,
                statements: 0,
            });
            loop {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for _ in 0..binds {
                    query = query.bind(cutoff);
                }
                let query = query.bind(i64::from(batch_size));
                let rows = self
                    .timed(
                        "a retention DELETE",
                        statement_timeout,
                        query.execute(&mut *conn),
                    )
                    .await?
                    .rows_affected();
                record(deleted, on_batch, rows);
                if rows < u64::from(batch_size) {
                    break;
                }
            }
        }
        let release = format!("DO RELEASE_LOCK({LOCK_NAME})");
        let released = self
            .timed(
                "RELEASE_LOCK",
                statement_timeout,
                sqlx::query(sqlx::AssertSqlSafe(release)).execute(&mut *conn),
            )
            .await;
        if let Err(e) = released {
            // Closing the connection releases it anyway.
            tracing::debug!(error = %e, "cannot release the retention lock");
        }
        Ok(Sweep::Swept(std::mem::take(deleted)))
    }

    /// `operation` within `timeout`, its failure described.
    async fn timed<T>(
        &self,
        what: &str,
        timeout: Duration,
        operation: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(SinkError::classify(&e, self.redactor())),
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
