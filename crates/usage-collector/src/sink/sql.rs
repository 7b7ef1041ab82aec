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

use sqlx::query_builder::Separated;
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
    /// Appended to a multi-row event INSERT so a repeated `event_id` is a no-op.
    const ON_DUPLICATE_EVENT: &'static str;
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
    const ON_DUPLICATE_EVENT: &'static str = " ON CONFLICT (event_id) DO NOTHING";
    const ON_DUPLICATE_SESSION: &'static str = " ON CONFLICT (session_id) DO UPDATE SET \
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

fn push_value<DB>(list: &mut Separated<'_, DB, &'static str>, value: &Value)
where
    DB: Database,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
    PrimitiveDateTime: for<'q> Encode<'q, DB> + Type<DB>,
{
    match value {
        Value::Null => list.push("NULL"),
        Value::Id(id) => list.push_bind(&id[..]),
        Value::Text(text) | Value::Json(text) => list.push_bind(text.as_str()),
        Value::Int(int) => list.push_bind(*int),
        Value::Bool(b) => list.push_bind(*b),
        Value::Time(time) => list.push_bind(*time),
    };
}

fn push_optional<DB>(list: &mut Separated<'_, DB, &'static str>, value: Option<&str>)
where
    DB: Database,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    match value {
        Some(text) => list.push_bind(text),
        None => list.push("NULL"),
    };
}

fn column_list(columns: impl IntoIterator<Item = &'static str>) -> String {
    let names: Vec<String> = columns.into_iter().map(|c| format!("`{c}`")).collect();
    names.join(", ")
}

/// Writes a batch inside `conn`'s open transaction (the caller commits or rolls back).
pub async fn write_in<DB>(
    conn: &mut DB::Connection,
    catalog: &Catalog,
    batch: &RowBatch<'_>,
) -> Result<Written, sqlx::Error>
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
                    push_value(&mut list, value);
                }
            });
            query.push(DB::ON_DUPLICATE_EVENT);
            query.build().execute(&mut *conn).await?;
            inserted += chunk.len() as u64;
        }
        written.rows.push((table.name, inserted));
    }
    if !batch.sessions.is_empty() {
        written.sessions = upsert_sessions::<DB>(conn, &batch.sessions).await?;
        refresh_sessions::<DB>(conn, catalog, batch).await?;
    }
    Ok(written)
}

async fn upsert_sessions<DB>(
    conn: &mut DB::Connection,
    sessions: &std::collections::BTreeMap<&str, SessionRow>,
) -> Result<u64, sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    PrimitiveDateTime: for<'q> Encode<'q, DB> + Type<DB>,
{
    // Every session column but the counters, which are derived from `program_executions`.
    let columns = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|i| SESSION_COLUMNS[i].name);
    let entries: Vec<_> = sessions.iter().collect();
    for chunk in entries.chunks(MAX_BINDS / columns.len()) {
        let mut query = QueryBuilder::<DB>::new(format!(
            "INSERT INTO `ide_sessions` ({}) ",
            column_list(columns)
        ));
        query.push_values(chunk, |mut list, (id, s)| {
            list.push_bind(**id);
            list.push_bind(s.service.as_str());
            push_optional(&mut list, s.user_id.as_deref());
            list.push_bind(s.start_time);
            list.push_bind(s.last_activity);
            match s.end_time {
                Some(end) => list
                    .push_bind(end)
                    .push_bind((end - s.start_time).whole_seconds()),
                None => list.push("NULL").push("NULL"),
            };
            push_optional(&mut list, s.user_agent.as_deref());
            push_optional(&mut list, s.ip_address.as_deref());
        });
        query.push(DB::ON_DUPLICATE_SESSION);
        query.build().execute(&mut *conn).await?;
    }
    Ok(sessions.len() as u64)
}

/// Recounts counters from `program_executions` for the batch's sessions with new runs, and
/// (where the upsert cannot) sets the durations of its ended sessions.
async fn refresh_sessions<DB>(
    conn: &mut DB::Connection,
    catalog: &Catalog,
    batch: &RowBatch<'_>,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    // Counters change only for sessions that got program runs in this batch.
    let runs = catalog
        .tables()
        .iter()
        .position(|t| t.name == usage_tracker::catalog::tables::PROGRAM_EXECUTIONS);
    let session_column = EVENT_COLUMNS.iter().position(|c| c.name == "session_id");
    let mut recount: Vec<&str> = match (runs, session_column) {
        (Some(table), Some(column)) => batch.rows[table]
            .iter()
            .filter_map(|row| match &row[column] {
                Value::Text(id) => Some(id.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    recount.sort_unstable();
    recount.dedup();
    const COUNTERS: &str = "UPDATE `ide_sessions` SET \
         programs_run = (SELECT COUNT(*) FROM `program_executions` p \
             WHERE p.session_id = ide_sessions.session_id), \
         lines_executed = (SELECT COALESCE(SUM(p.lines_executed), 0) FROM `program_executions` p \
             WHERE p.session_id = ide_sessions.session_id), \
         errors_encountered = (SELECT COUNT(*) FROM `program_executions` p \
             WHERE p.session_id = ide_sessions.session_id AND NOT p.success) \
         WHERE session_id IN (";
    update_in::<DB>(conn, COUNTERS, &recount, "").await?;
    let Some(duration) = DB::DURATION_UPDATE else {
        return Ok(());
    };
    // A duration changes when a session ends, or when a late event moves an ended session's
    // start: recompute it for every ended session the batch touched.
    let ids: Vec<&str> = batch.sessions.keys().copied().collect();
    let durations =
        format!("UPDATE `ide_sessions` SET duration_seconds = {duration} WHERE session_id IN (");
    update_in::<DB>(conn, &durations, &ids, " AND end_time IS NOT NULL").await
}

/// Runs `prefix` + a bound `IN` list of `ids` + `)` + `suffix`, in chunks.
async fn update_in<DB>(
    conn: &mut DB::Connection,
    prefix: &str,
    ids: &[&str],
    suffix: &str,
) -> Result<(), sqlx::Error>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
{
    for chunk in ids.chunks(MAX_BINDS) {
        let mut query = QueryBuilder::<DB>::new(prefix);
        let mut list = query.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        query.push(")");
        query.push(suffix);
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}
