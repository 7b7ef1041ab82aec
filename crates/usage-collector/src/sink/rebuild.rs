//! The summaries recomputed from the raw rows, for a range of days, while collectors write.
//!
//! Per day, two short transactions, so no statement runs long and neither meets a writer in a
//! lock cycle:
//! 1. the day's rows of `daily_usage_by_service`: locked first (with the range's gap, under
//!    REPEATABLE READ on MySQL, so no writer adds a new shard row meanwhile), then the day's
//!    counts are read from the raw rows — by the tracking plan's counts, as the writer adds
//!    them — and replace the day's rows. A writer that inserted rows for the day but has not
//!    committed waits for the lock at the end of its transaction, so its rows are neither in
//!    the recount nor lost: it adds them after;
//! 2. the counters of the sessions that started that day, in chunks: each chunk's session rows
//!    are locked (in key order, as writers lock them), recounted from all of their raw rows,
//!    and set.
//!
//! Each transaction reads only the day's rows through the time indexes (and the chunk's
//! sessions through the session indexes): the work is bounded by the days asked for. On SQLite
//! each transaction takes the write lock first (`BEGIN IMMEDIATE`).

use std::collections::BTreeMap;

use sqlx::{Connection, Executor};
use time::{Date, PrimitiveDateTime, Time};

use super::error::SinkError;
use super::handle::{PoolRef, Sink};
use super::sql::{DAILY_ROLLUP, DayCounts, SessionCounts};
use crate::catalog::Catalog;
use crate::catalog::tables::{Table, TableKind};

/// Sessions recounted per transaction.
const SESSION_CHUNK: usize = 200;

/// What one day's rebuild set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DayRebuilt {
    /// The day.
    pub date: String,
    /// Services with counts that day.
    pub services: usize,
    /// Sessions that started that day, recounted.
    pub sessions: usize,
}

/// One aggregate of a table's rows: `SUM(CASE WHEN cond THEN value ELSE 0 END)`, feeding a
/// daily counter, a session counter, or both.
struct Aggregate {
    sql: String,
    daily: Option<&'static str>,
    session: Option<&'static str>,
}

fn aggregates(table: &Table) -> Vec<Aggregate> {
    table
        .counts
        .iter()
        .map(|count| {
            let condition = count
                .when_false
                .map_or("1 = 1".to_owned(), |column| format!("`{column}` = 0"));
            let value = count
                .add
                .map_or("1".to_owned(), |column| format!("COALESCE(`{column}`, 0)"));
            Aggregate {
                sql: format!("SUM(CASE WHEN {condition} THEN {value} ELSE 0 END)"),
                daily: count.daily,
                session: count.session,
            }
        })
        .collect()
}

fn add_daily(counts: &mut DayCounts, name: &str, n: i64) {
    match name {
        "page_visits" => counts.page_visits += n,
        "programs_run" => counts.programs_run += n,
        "program_errors" => counts.program_errors += n,
        "features_used" => counts.features_used += n,
        "other_events" => counts.other_events += n,
        _ => {}
    }
}

fn add_session(counts: &mut SessionCounts, name: &str, n: i64) {
    match name {
        "programs_run" => counts.programs_run += n,
        "lines_executed" => counts.lines_executed += n,
        "errors_encountered" => counts.errors_encountered += n,
        "page_visits" => counts.page_visits += n,
        "features_used" => counts.features_used += n,
        _ => {}
    }
}

/// The tables whose rows count, with their aggregates.
fn counted(catalog: &Catalog) -> Vec<(&Table, Vec<Aggregate>)> {
    catalog
        .tables()
        .iter()
        .filter(|t| t.kind == TableKind::Events)
        .map(|t| (t, aggregates(t)))
        .filter(|(_, a)| !a.is_empty())
        .collect()
}

macro_rules! rebuild_on {
    ($sink:expr, $catalog:expr, $day:expr, $pool:expr, $locking:expr, $signed:expr, $begin:expr) => {{
        let (start, end) = day_range($day);
        let fail = |e: sqlx::Error| SinkError::classify(&e, $sink.redactor());
        // 1. The day's rollup rows.
        let mut conn = $pool.acquire().await.map_err(fail)?;
        let mut tx = $begin(&mut conn).await.map_err(fail)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT service FROM `{DAILY_ROLLUP}` WHERE `date` = ?{}",
            $locking
        )))
        .bind($day)
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
        let mut days: BTreeMap<String, DayCounts> = BTreeMap::new();
        let sessions: Vec<(String, i64)> = sqlx::query_as(
            "SELECT service, COUNT(*) FROM `ide_sessions` WHERE start_time >= ? AND start_time < ? \
             GROUP BY service",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
        for (service, n) in sessions {
            days.entry(service).or_default().sessions += n;
        }
        for (table, aggregates) in counted($catalog) {
            // MySQL sums whole numbers as DECIMAL: read back as 64-bit integers.
            let sums: Vec<String> = aggregates
                .iter()
                .map(|a| format!("CAST({} AS {})", a.sql, $signed))
                .collect();
            let sql = format!(
                "SELECT service, {} FROM `{}` WHERE `timestamp` >= ? AND `timestamp` < ? \
                 GROUP BY service",
                sums.join(", "),
                table.name
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(start)
                .bind(end)
                .fetch_all(&mut *tx)
                .await
                .map_err(fail)?;
            for row in rows {
                use sqlx::Row;
                let service: String = row.try_get(0).map_err(fail)?;
                let counts = days.entry(service).or_default();
                for (i, aggregate) in aggregates.iter().enumerate() {
                    let n: Option<i64> = row.try_get(i + 1).map_err(fail)?;
                    if let Some(name) = aggregate.daily {
                        add_daily(counts, name, n.unwrap_or(0));
                    }
                }
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM `{DAILY_ROLLUP}` WHERE `date` = ?"
        )))
        .bind($day)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        for (service, c) in &days {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO `{DAILY_ROLLUP}` (`date`, service, shard, sessions, page_visits, \
                 programs_run, program_errors, features_used, other_events) \
                 VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)"
            )))
            .bind($day)
            .bind(service)
            .bind(c.sessions)
            .bind(c.page_visits)
            .bind(c.programs_run)
            .bind(c.program_errors)
            .bind(c.features_used)
            .bind(c.other_events)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        // 2. The counters of the sessions that started that day.
        let keys: Vec<(String, String)> = sqlx::query_as(
            "SELECT service, session_id FROM `ide_sessions` WHERE start_time >= ? AND start_time < ? \
             ORDER BY service, session_id",
        )
        .bind(start)
        .bind(end)
        .fetch_all(&mut *conn)
        .await
        .map_err(fail)?;
        for chunk in keys.chunks(SESSION_CHUNK) {
            let list = vec!["(?, ?)"; chunk.len()].join(", ");
            let mut tx = $begin(&mut conn).await.map_err(fail)?;
            let mut lock = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT session_id FROM `ide_sessions` WHERE (service, session_id) IN ({list}) \
                 ORDER BY service, session_id{}",
                $locking
            )));
            for (service, id) in chunk {
                lock = lock.bind(service).bind(id);
            }
            lock.fetch_all(&mut *tx).await.map_err(fail)?;
            let mut recount: BTreeMap<(String, String), SessionCounts> = chunk
                .iter()
                .map(|key| (key.clone(), SessionCounts::default()))
                .collect();
            for (table, aggregates) in counted($catalog) {
                if aggregates.iter().all(|a| a.session.is_none()) {
                    continue;
                }
                let sums: Vec<String> = aggregates
                    .iter()
                    .map(|a| format!("CAST({} AS {})", a.sql, $signed))
                    .collect();
                let sql = format!(
                    "SELECT service, session_id, {} FROM `{}` WHERE (service, session_id) IN \
                     ({list}) GROUP BY service, session_id",
                    sums.join(", "),
                    table.name
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (service, id) in chunk {
                    query = query.bind(service).bind(id);
                }
                for row in query.fetch_all(&mut *tx).await.map_err(fail)? {
                    use sqlx::Row;
                    let key: (String, String) =
                        (row.try_get(0).map_err(fail)?, row.try_get(1).map_err(fail)?);
                    let Some(counts) = recount.get_mut(&key) else {
                        continue;
                    };
                    for (i, aggregate) in aggregates.iter().enumerate() {
                        let n: Option<i64> = row.try_get(i + 2).map_err(fail)?;
                        if let Some(name) = aggregate.session {
                            add_session(counts, name, n.unwrap_or(0));
                        }
                    }
                }
            }
            for ((service, id), c) in &recount {
                sqlx::query(
                    "UPDATE `ide_sessions` SET programs_run = ?, lines_executed = ?, \
                     errors_encountered = ?, page_visits = ?, features_used = ? \
                     WHERE service = ? AND session_id = ?",
                )
                .bind(c.programs_run)
                .bind(c.lines_executed)
                .bind(c.errors_encountered)
                .bind(c.page_visits)
                .bind(c.features_used)
                .bind(service)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            }
            tx.commit().await.map_err(fail)?;
        }
        Ok(DayRebuilt {
            date: $day.to_string(),
            services: days.len(),
            sessions: keys.len(),
        })
    }};
}

/// `[day 00:00, next day 00:00)`.
fn day_range(day: Date) -> (PrimitiveDateTime, PrimitiveDateTime) {
    let start = PrimitiveDateTime::new(day, Time::MIDNIGHT);
    let end = day.next_day().map_or(PrimitiveDateTime::MAX, |d| {
        PrimitiveDateTime::new(d, Time::MIDNIGHT)
    });
    (start, end)
}

impl Sink {
    /// Recomputes the daily rollup of `day` and the counters of the sessions that started that
    /// day from the raw rows, by `catalog`'s counts (see the module's notes).
    pub async fn rebuild_day(&self, catalog: &Catalog, day: Date) -> Result<DayRebuilt, SinkError> {
        match self.pool() {
            PoolRef::MySql(pool) => {
                async fn begin(
                    conn: &mut sqlx::MySqlConnection,
                ) -> Result<sqlx::Transaction<'_, sqlx::MySql>, sqlx::Error> {
                    // Next-key locks on the day's range: no writer adds a shard row meanwhile.
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        .await?;
                    conn.begin().await
                }
                rebuild_on!(self, catalog, day, pool, " FOR UPDATE", "SIGNED", begin)
            }
            PoolRef::Sqlite(pool) => {
                async fn begin(
                    conn: &mut sqlx::SqliteConnection,
                ) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
                    conn.begin_with("BEGIN IMMEDIATE").await
                }
                rebuild_on!(self, catalog, day, pool, "", "INTEGER", begin)
            }
            PoolRef::Blackhole => Ok(DayRebuilt {
                date: day.to_string(),
                ..DayRebuilt::default()
            }),
        }
    }
}
