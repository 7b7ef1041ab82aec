//! The statements of the operator's commands (`usage-collector status`, `dead-letters`,
//! `rollups rebuild`): the schema's version and the releases it serves, dead letters counted,
//! read and written again, and the summaries recomputed from the raw rows.

use std::collections::BTreeMap;

use sqlx::Row;
use time::PrimitiveDateTime;

use super::compat::{Serves, compare_releases};
use super::error::SinkError;
use super::handle::{PoolRef, Sink};
use super::sql::{self, Written};
use crate::catalog::{Catalog, RowBatch};

/// A dead letter as the table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    /// Its row in `dead_letters`.
    pub id: i64,
    /// The event's id.
    pub event_id: Vec<u8>,
    /// The service that sent it (empty for one kept by release 0.1.0 whose row names none).
    pub service: String,
    /// The table it was for.
    pub table: String,
    /// The short reason (`row_value`, `not_in_catalogue`, …).
    pub reason_class: String,
    /// The database's words.
    pub reason: String,
    /// The row, as JSON (`writer::dead_letters`).
    pub row_data: String,
    /// When it was kept (UTC).
    pub created_at: PrimitiveDateTime,
}

/// Dead letters of one reason, service and table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeadLetterGroup {
    /// The short reason.
    pub reason_class: String,
    /// The service.
    pub service: String,
    /// The table.
    pub table: String,
    /// How many.
    pub count: u64,
    /// The oldest's time (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub oldest: String,
    /// The newest's time.
    pub newest: String,
}

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this reason class.
    pub reason: Option<String>,
    /// Only those kept at or after this time (UTC).
    pub since: Option<PrimitiveDateTime>,
}

impl DeadLetterFilter {
    /// ` WHERE …` with its binds, for the dead letters this filter takes.
    fn clause(&self) -> (String, Vec<FilterBind>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        if let Some(reason) = &self.reason {
            conditions.push("reason_class = ?");
            binds.push(FilterBind::Text(reason.clone()));
        }
        if let Some(since) = self.since {
            conditions.push("created_at >= ?");
            binds.push(FilterBind::Time(since));
        }
        let clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        (clause, binds)
    }
}

enum FilterBind {
    Text(String),
    Time(PrimitiveDateTime),
}

/// Runs `$body` with `$pool` bound to the sink's pool and `$db` to its sqlx database type.
macro_rules! on_pool {
    ($self:expr, |$pool:ident, $db:ident| $body:expr, blackhole => $none:expr) => {
        match $self.pool() {
            PoolRef::MySql($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::MySql;
                $body
            }
            PoolRef::Sqlite($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            PoolRef::Blackhole => $none,
        }
    };
}

/// Binds a filter's values to a query, in order.
macro_rules! bind_filter {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                FilterBind::Text(text) => query.bind(text),
                FilterBind::Time(time) => query.bind(time),
            };
        }
        query
    }};
}

impl Sink {
    fn failed(&self, e: sqlx::Error) -> SinkError {
        SinkError::classify(&e, self.redactor())
    }

    /// The schema's version and the releases it serves.
    pub async fn schema_serves(&self) -> Result<Serves, SinkError> {
        let own_version = match self.pool() {
            PoolRef::Sqlite(_) => crate::sink::sqlite::migrations::migrator(),
            _ => crate::sink::mysql::migrations::migrator(),
        }
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
        let (schema_version, releases): (Option<i64>, Vec<String>) = on_pool!(self, |pool, Db| {
            let version: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(pool)
                    .await
                    .map_err(|e| self.failed(e))?;
            // A schema made before `schema_releases` serves release 0.1.0 and later.
            let releases: Vec<String> =
                match sqlx::query_scalar("SELECT oldest_release FROM schema_releases")
                    .fetch_all(pool)
                    .await
                {
                    Ok(releases) => releases,
                    Err(e) if self.fail_is_missing_table(&e) => Vec::new(),
                    Err(e) => return Err(self.failed(e)),
                };
            (version, releases)
        }, blackhole => (Some(own_version), Vec::new()));
        let oldest_release = releases
            .into_iter()
            .max_by(|a, b| compare_releases(a, b))
            .unwrap_or_else(|| "0.1.0".to_owned());
        Ok(Serves {
            schema_version: schema_version.unwrap_or(0),
            own_version,
            oldest_release,
        })
    }

    fn fail_is_missing_table(&self, e: &sqlx::Error) -> bool {
        self.fail_kind(e) == "missing_table"
    }

    fn fail_kind(&self, e: &sqlx::Error) -> &'static str {
        SinkError::classify(e, self.redactor()).reason
    }

    /// Dead letters by reason class.
    pub async fn dead_letter_counts(&self) -> Result<BTreeMap<String, u64>, SinkError> {
        let rows: Vec<(String, i64)> = on_pool!(self, |pool, Db| {
            sqlx::query_as(
                "SELECT reason_class, COUNT(*) FROM dead_letters GROUP BY reason_class",
            )
            .fetch_all(pool)
            .await
            .map_err(|e| self.failed(e))?
        }, blackhole => Vec::new());
        Ok(rows
            .into_iter()
            .map(|(class, n)| (class, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Dead letters the filter takes, grouped by reason, service and table.
    pub async fn dead_letter_groups(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetterGroup>, SinkError> {
        let (clause, binds) = filter.clause();
        let sql = format!(
            "SELECT reason_class, service, table_name, COUNT(*), MIN(created_at), MAX(created_at) \
             FROM dead_letters{clause} GROUP BY reason_class, service, table_name \
             ORDER BY reason_class, service, table_name"
        );
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        let text = |t: PrimitiveDateTime| t.format(&format).unwrap_or_else(|_| t.to_string());
        let rows: Vec<(
            String,
            String,
            String,
            i64,
            PrimitiveDateTime,
            PrimitiveDateTime,
        )> = on_pool!(self, |pool, Db| {
                bind_filter!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), binds)
                    .fetch_all(pool)
                    .await
                    .map_err(|e| self.failed(e))?
            }, blackhole => Vec::new());
        Ok(rows
            .into_iter()
            .map(
                |(reason_class, service, table, count, oldest, newest)| DeadLetterGroup {
                    reason_class,
                    service,
                    table,
                    count: u64::try_from(count).unwrap_or(0),
                    oldest: text(oldest),
                    newest: text(newest),
                },
            )
            .collect())
    }

    /// At most `limit` dead letters the filter takes, after row `after` (by id, in order).
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredDeadLetter>, SinkError> {
        let (clause, binds) = filter.clause();
        let joiner = if clause.is_empty() { " WHERE" } else { " AND" };
        let sql = format!(
            "SELECT CAST(id AS SIGNED), event_id, service, table_name, reason_class, reason, \
             row_data, created_at FROM dead_letters{clause}{joiner} id > ? \
             ORDER BY id LIMIT ?"
        );
        on_pool!(self, |pool, Db| {
            let rows = bind_filter!(sqlx::query(sqlx::AssertSqlSafe(sql)), binds)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(|e| self.failed(e))?;
            rows.iter()
                .map(|row| {
                    Ok(StoredDeadLetter {
                        id: row.try_get(0)?,
                        event_id: row.try_get(1)?,
                        service: row.try_get(2)?,
                        table: row.try_get(3)?,
                        reason_class: row.try_get(4)?,
                        reason: row.try_get(5)?,
                        row_data: row.try_get(6)?,
                        created_at: row.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(|e| self.failed(e))
        }, blackhole => Ok(Vec::new()))
    }

    /// Writes a dead letter's event again, with its session and summaries, and removes the
    /// dead letter in the same transaction: written once, or not at all and still kept.
    pub async fn replay_dead_letter(
        &self,
        catalog: &Catalog,
        batch: &RowBatch<'_>,
        dead_letter: i64,
    ) -> Result<Written, SinkError> {
        on_pool!(self, |pool, Db| {
            let mut tx = pool.begin().await.map_err(|e| self.failed(e))?;
            let written = <Db as sql::Driver>::write_in(&mut tx, catalog, batch)
                .await
                .map_err(|e| self.failed(e))?;
            sqlx::query("DELETE FROM dead_letters WHERE id = ?")
                .bind(dead_letter)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
            Ok(written)
        }, blackhole => Ok(Written::default()))
    }

    /// Gives a dead letter that failed again its new reason.
    pub async fn update_dead_letter(
        &self,
        dead_letter: i64,
        reason_class: &str,
        reason: &str,
    ) -> Result<(), SinkError> {
        let mut reason = reason.to_owned();
        crate::catalog::mapping::cut(&mut reason, 2048);
        on_pool!(self, |pool, Db| {
            sqlx::query("UPDATE dead_letters SET reason_class = ?, reason = ? WHERE id = ?")
                .bind(reason_class)
                .bind(&reason)
                .bind(dead_letter)
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| self.failed(e))
        }, blackhole => Ok(()))
    }
}
