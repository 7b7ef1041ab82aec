//! The SQL both databases share, generic over the sqlx driver; each dialect supplies only the
//! clauses where MySQL and SQLite differ.
//!
//! One batch is one transaction, in this order — the order is what keeps the session counters
//! right under concurrent writers:
//! 1. insert the event rows, idempotently on `event_id` (distinct events take no common locks,
//!    so concurrent transactions overlap here);
//! 2. upsert every touched session, sorted by id. This takes the session rows' locks, in the
//!    same order in every transaction, and holds them to the commit: two transactions touching
//!    one session finish one after the other, and only this short tail is serialized;
//! 3. recount the counters of the sessions that got program runs in the batch from
//!    `program_executions` (read-committed: the count, taken after the lock was granted, sees
//!    this batch's runs and every run committed before). `duration_seconds` follows the
//!    merged start and end (a late event may move an ended session's start): MySQL sets it in
//!    the upsert itself, SQLite in an UPDATE of the batch's ended sessions.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use sqlx::{Database, Encode, Executor, IntoArguments, QueryBuilder, Type};
use time::PrimitiveDateTime;

use crate::catalog::tables::{EVENT_COLUMNS, SESSION_COLUMNS, TableKind};
use crate::catalog::{Catalog, RowBatch, SessionRow, Value};

/// A migrator for embedded `(description, sql)` migrations, numbered from 1 in order.
pub fn migrator(migrations: &[(&'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        (1..)
            .zip(migrations)
            .map(|(version, (description, sql))| {
                Migration::new(
                    version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Most bind parameters in one statement (SQLite's default limit is the lowest of the two).
const MAX_BINDS: usize = 32_766;

/// What differs between the dialects.
pub trait Dialect: Database {
    /// Appended to a multi-row event INSERT so a repeated (`service`, `event_id`) is a no-op.
    const ON_DUPLICATE_EVENT: &'static str;
    /// Appended to a dead letter's INSERT so a repeated `event_id` is a no-op.
    const ON_DUPLICATE_DEAD_LETTER: &'static str;
    /// Appended to the session INSERT: how an existing row merges the new values.
    const ON_DUPLICATE_SESSION: &'static str;
    /// `SET` expression for `duration_seconds` from `start_time` and `end_time`, run as an
    /// UPDATE after the upsert; `None` when [`Self::ON_DUPLICATE_SESSION`] sets it itself.
    const DURATION_UPDATE: Option<&'static str>;
    /// Appended to the heartbeat INSERT: an existing row only moves forward.
    const ON_DUPLICATE_HEARTBEAT: &'static str;
}

impl Dialect for sqlx::MySql {
    // Not INSERT IGNORE: that would also turn real errors (bad values) into warnings.
    const ON_DUPLICATE_EVENT: &'static str = " ON DUPLICATE KEY UPDATE event_id = event_id";
    const ON_DUPLICATE_DEAD_LETTER: &'static str = " ON DUPLICATE KEY UPDATE event_id = event_id";
    const ON_DUPLICATE_SESSION: &'static str = " ON DUPLICATE KEY UPDATE \
        start_time = LEAST(start_time, VALUES(start_time)), \
        last_activity = GREATEST(last_activity, VALUES(last_activity)), \
        end_time = COALESCE(GREATEST(end_time, VALUES(end_time)), end_time, VALUES(end_time)), \
        user_id = COALESCE(user_id, VALUES(user_id)), \
        user_agent = COALESCE(user_agent, VALUES(user_agent)), \
        ip_address = COALESCE(ip_address, VALUES(ip_address)), \
        duration_seconds = TIMESTAMPDIFF(SECOND, LEAST(start_time, VALUES(start_time)), \
            COALESCE(GREATEST(end_time, VALUES(end_time)), end_time, VALUES(end_time)))";
    // The upsert sets the duration itself, repeating the merge expressions, so it is right
    // whether the assignments before it are seen updated (MySQL, MariaDB by default) or not
    // (SIMULTANEOUS_ASSIGNMENT).
    const DURATION_UPDATE: Option<&'static str> = None;
    const ON_DUPLICATE_HEARTBEAT: &'static str =
        " ON DUPLICATE KEY UPDATE last_beat = GREATEST(last_beat, VALUES(last_beat))";
}

impl Dialect for sqlx::Sqlite {
    const ON_DUPLICATE_EVENT: &'static str = " ON CONFLICT (service, event_id) DO NOTHING";
    const ON_DUPLICATE_DEAD_LETTER: &'static str = " ON CONFLICT (event_id) DO NOTHING";
    const ON_DUPLICATE_SESSION: &'static str = " ON CONFLICT (service, session_id) DO UPDATE SET \
        start_time = MIN(start_time, excluded.start_time), \
        last_activity = MAX(last_activity, excluded.last_activity), \
        end_time = COALESCE(MAX(end_time, excluded.end_time), end_time, excluded.end_time), \
        user_id = COALESCE(user_id, excluded.user_id), \
        user_agent = COALESCE(user_agent, excluded.user_agent), \
        ip_address = COALESCE(ip_address, excluded.ip_address)";
    const DURATION_UPDATE: Option<&'static str> =
        Some("CAST(ROUND((julianday(end_time) - julianday(start_time)) * 86400) AS INTEGER)");
    const ON_DUPLICATE_HEARTBEAT: &'static str =
        " ON CONFLICT (instance) DO UPDATE SET last_beat = MAX(last_beat, excluded.last_beat)";
}

/// Rows a batch committed, per table. A repeat of an already written event counts too: its
/// insert is a no-op, and counting it keeps `accepted = written + rejected` true. (MySQL's
/// affected-rows cannot tell the two apart under the FOUND_ROWS flag the driver sets.)
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// (table, new rows) for each table the batch touched.
    pub rows: Vec<(&'static str, u64)>,
    /// Sessions upserted.
    pub sessions: u64,
}

/// A future the shared SQL returns.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// A sqlx driver the shared SQL runs on: a [`Dialect`] whose connections execute queries and
/// whose arguments take every value type a row holds. MySQL and SQLite are both, through the
/// one blanket impl below, which is the only place the driver's trait bounds are written.
pub trait Driver: Dialect {
    /// Writes a batch inside `conn`'s open transaction (the caller commits or rolls back).
    fn write_in<'a>(
        conn: &'a mut Self::Connection,
        catalog: &'a Catalog,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, Written>;

    /// Upserts the batch's sessions (every session column but the derived counters).
    fn upsert_sessions<'a>(
        conn: &'a mut Self::Connection,
        sessions: &'a BTreeMap<(&str, &str), SessionRow>,
    ) -> Boxed<'a, u64>;

    /// Recounts counters for the batch's sessions with new runs, and (where the upsert cannot)
    /// sets the durations of its ended sessions.
    fn refresh_sessions<'a>(
        conn: &'a mut Self::Connection,
        catalog: &'a Catalog,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, ()>;

    /// Runs `prefix` + a bound `IN` list of (service, session id) pairs + `)` + `suffix`, in
    /// chunks.
    fn update_in<'a>(
        conn: &'a mut Self::Connection,
        prefix: &'a str,
        ids: &'a [(&str, &str)],
        suffix: &'a str,
    ) -> Boxed<'a, ()>;
}

impl<DB> Driver for DB
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
    PrimitiveDateTime: for<'q> Encode<'q, DB> + Type<DB>,
{
    fn write_in<'a>(
        conn: &'a mut DB::Connection,
        catalog: &'a Catalog,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, Written> {
        Box::pin(async move {
            let mut written = Written::default();
            for (table_id, rows) in batch.tables() {
                let table = &catalog.tables()[table_id];
                debug_assert_eq!(table.kind, TableKind::Events);
                let per_statement = (MAX_BINDS / table.columns.len()).max(1);
                let mut inserted = 0;
                for chunk in rows.chunks(per_statement) {
                    let mut query = QueryBuilder::<DB>::new(format!(
                        "INSERT INTO `{}` ({}) ",
                        table.name,
                        column_list(table.columns.iter().map(|c| c.name))
                    ));
                    query.push_values(chunk, |mut list, row| {
                        for value in row.iter() {
                            match value {
                                Value::Null => list.push("NULL"),
                                Value::Id(id) => list.push_bind(&id[..]),
                                Value::Text(text) | Value::Json(text) => {
                                    list.push_bind(text.as_str())
                                }
                                Value::Int(int) => list.push_bind(*int),
                                Value::Bool(b) => list.push_bind(*b),
                                Value::Time(time) => list.push_bind(*time),
                            };
                        }
                    });
                    query.push(DB::ON_DUPLICATE_EVENT);
                    query.build().execute(&mut *conn).await?;
                    inserted += chunk.len() as u64;
                }
                written.rows.push((table.name, inserted));
            }
            if !batch.sessions.is_empty() {
                written.sessions = DB::upsert_sessions(conn, &batch.sessions).await?;
                DB::refresh_sessions(conn, catalog, batch).await?;
            }
            Ok(written)
        })
    }

    fn upsert_sessions<'a>(
        conn: &'a mut DB::Connection,
        sessions: &'a BTreeMap<(&str, &str), SessionRow>,
    ) -> Boxed<'a, u64> {
        Box::pin(async move {
            let entries: Vec<_> = sessions.iter().collect();
            for chunk in entries.chunks(MAX_BINDS / SESSION_UPSERT.len()) {
                let mut query = QueryBuilder::<DB>::new(format!(
                    "INSERT INTO `ide_sessions` ({}) ",
                    column_list(SESSION_UPSERT.iter().map(|c| c.name()))
                ));
                query.push_values(chunk, |mut list, ((_, id), s)| {
                    // Each value is chosen by its column's name, so the column list and the
                    // values cannot drift apart.
                    for column in SESSION_UPSERT {
                        let bound: Option<SessionValue<'_>> = match column {
                            SessionColumn::SessionId => Some(SessionValue::Text(id)),
                            SessionColumn::Service => Some(SessionValue::Text(s.service.as_str())),
                            SessionColumn::UserId => s.user_id.as_deref().map(SessionValue::Text),
                            SessionColumn::StartTime => Some(SessionValue::Time(s.start_time)),
                            SessionColumn::LastActivity => {
                                Some(SessionValue::Time(s.last_activity))
                            }
                            SessionColumn::EndTime => s.end_time.map(SessionValue::Time),
                            SessionColumn::DurationSeconds => s
                                .end_time
                                .map(|end| SessionValue::Int((end - s.start_time).whole_seconds())),
                            SessionColumn::UserAgent => {
                                s.user_agent.as_deref().map(SessionValue::Text)
                            }
                            SessionColumn::IpAddress => {
                                s.ip_address.as_deref().map(SessionValue::Text)
                            }
                        };
                        match bound {
                            None => list.push("NULL"),
                            Some(SessionValue::Text(text)) => list.push_bind(text),
                            Some(SessionValue::Time(time)) => list.push_bind(time),
                            Some(SessionValue::Int(int)) => list.push_bind(int),
                        };
                    }
                });
                query.push(DB::ON_DUPLICATE_SESSION);
                query.build().execute(&mut *conn).await?;
            }
            Ok(sessions.len() as u64)
        })
    }

    fn refresh_sessions<'a>(
        conn: &'a mut DB::Connection,
        catalog: &'a Catalog,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            // Counters change only for sessions that got program runs in this batch.
            let runs = catalog
                .tables()
                .iter()
                .position(|t| t.name == usage_tracker::catalog::tables::PROGRAM_EXECUTIONS);
            let column = |name: &str| EVENT_COLUMNS.iter().position(|c| c.name == name);
            let mut recount: Vec<(&str, &str)> =
                match (runs, column("service"), column("session_id")) {
                    (Some(table), Some(service), Some(session)) => batch.rows[table]
                        .iter()
                        .filter_map(|row| match (&row[service], &row[session]) {
                            (Value::Text(service), Value::Text(id)) => {
                                Some((service.as_str(), id.as_str()))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
            recount.sort_unstable();
            recount.dedup();
            DB::update_in(conn, COUNTERS, &recount, "").await?;
            let Some(duration) = DB::DURATION_UPDATE else {
                return Ok(());
            };
            // A duration changes when a session ends, or when a late event moves an ended
            // session's start: recompute it for every ended session the batch touched.
            let ids: Vec<(&str, &str)> = batch.sessions.keys().copied().collect();
            let durations = format!(
                "UPDATE `ide_sessions` SET duration_seconds = {duration} \
                 WHERE (service, session_id) IN ("
            );
            DB::update_in(conn, &durations, &ids, " AND end_time IS NOT NULL").await
        })
    }

    fn update_in<'a>(
        conn: &'a mut DB::Connection,
        prefix: &'a str,
        ids: &'a [(&str, &str)],
        suffix: &'a str,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            for chunk in ids.chunks(MAX_BINDS / 2) {
                let mut query = QueryBuilder::<DB>::new(prefix);
                for (n, (service, id)) in chunk.iter().enumerate() {
                    query.push(if n == 0 { "(" } else { ", (" });
                    query.push_bind(*service);
                    query.push(", ");
                    query.push_bind(*id);
                    query.push(")");
                }
                query.push(")");
                query.push(suffix);
                query.build().execute(&mut *conn).await?;
            }
            Ok(())
        })
    }
}

/// Recounts a session's counters from its service's `program_executions`.
const COUNTERS: &str = "UPDATE `ide_sessions` SET \
     programs_run = (SELECT COUNT(*) FROM `program_executions` p \
         WHERE p.service = ide_sessions.service AND p.session_id = ide_sessions.session_id), \
     lines_executed = (SELECT COALESCE(SUM(p.lines_executed), 0) FROM `program_executions` p \
         WHERE p.service = ide_sessions.service AND p.session_id = ide_sessions.session_id), \
     errors_encountered = (SELECT COUNT(*) FROM `program_executions` p \
         WHERE p.service = ide_sessions.service AND p.session_id = ide_sessions.session_id \
         AND NOT p.success) \
     WHERE (service, session_id) IN (";

/// The `ide_sessions` columns a session upsert writes: every one but the counters, which are
/// derived from `program_executions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionColumn {
    SessionId,
    Service,
    UserId,
    StartTime,
    LastActivity,
    EndTime,
    DurationSeconds,
    UserAgent,
    IpAddress,
}

const SESSION_UPSERT: [SessionColumn; 9] = [
    SessionColumn::SessionId,
    SessionColumn::Service,
    SessionColumn::UserId,
    SessionColumn::StartTime,
    SessionColumn::LastActivity,
    SessionColumn::EndTime,
    SessionColumn::DurationSeconds,
    SessionColumn::UserAgent,
    SessionColumn::IpAddress,
];

impl SessionColumn {
    /// The column's name, as declared in [`SESSION_COLUMNS`].
    fn name(self) -> &'static str {
        let name = match self {
            SessionColumn::SessionId => "session_id",
            SessionColumn::Service => "service",
            SessionColumn::UserId => "user_id",
            SessionColumn::StartTime => "start_time",
            SessionColumn::LastActivity => "last_activity",
            SessionColumn::EndTime => "end_time",
            SessionColumn::DurationSeconds => "duration_seconds",
            SessionColumn::UserAgent => "user_agent",
            SessionColumn::IpAddress => "ip_address",
        };
        debug_assert!(SESSION_COLUMNS.iter().any(|c| c.name == name));
        name
    }
}

/// One bound session value.
enum SessionValue<'a> {
    Text(&'a str),
    Time(PrimitiveDateTime),
    Int(i64),
}

fn column_list(columns: impl IntoIterator<Item = &'static str>) -> String {
    let names: Vec<String> = columns.into_iter().map(|c| format!("`{c}`")).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upserted_session_column_is_a_session_column_and_the_counters_are_not() {
        for column in SESSION_UPSERT {
            assert!(
                SESSION_COLUMNS.iter().any(|c| c.name == column.name()),
                "{column:?}"
            );
        }
        for counter in ["programs_run", "lines_executed", "errors_encountered"] {
            assert!(!SESSION_UPSERT.iter().any(|c| c.name() == counter));
        }
    }
}
