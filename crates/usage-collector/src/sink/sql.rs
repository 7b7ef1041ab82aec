//! The SQL both databases share, generic over the sqlx driver; each dialect supplies only the
//! clauses where MySQL and SQLite differ.
//!
//! One batch is one transaction, in this order — the order is what keeps the counters right
//! under concurrent writers:
//! 1. insert the event rows with plain multi-row INSERTs (distinct events take no common
//!    locks, so concurrent transactions overlap here). A statement that succeeds inserted every
//!    row it carried: that is what makes the summaries exact. One that meets an event already
//!    written (a retry, a replay, another collector) fails whole on the unique key and changes
//!    nothing; then the rows already present are read (a locking read, which waits for a
//!    concurrent writer of the same event to finish) and only the others are inserted, again
//!    until a statement succeeds. So the writer knows exactly which rows this transaction
//!    inserted;
//! 2. read the touched sessions' start times, locking the rows that exist (sorted, so every
//!    transaction locks them in the same order); insert the sessions that do not exist yet with
//!    a plain INSERT (retried the same way if another transaction created one meanwhile), and
//!    upsert the others, adding the newly inserted rows (runs, lines executed, errors, page
//!    visits, feature uses) to their counters — never a recount: a session's cost stays the
//!    same however long it runs. The session rows' locks are held to the commit: two
//!    transactions touching one session finish one after the other, and only this short tail
//!    is serialized;
//! 3. `duration_seconds` follows the merged start and end (a late event may move an ended
//!    session's start): MySQL sets it in the upsert itself, SQLite in an UPDATE of the batch's
//!    ended sessions;
//! 4. add the newly inserted rows, and the sessions created or moved to another day, to
//!    [`DAILY_ROLLUP`] (sorted by day and service, last, so its hot rows are locked only for
//!    the tail of the transaction).
//!
//! A rolled-back transaction takes its counts with it, and a committed one counted exactly the
//! rows it inserted: the summaries equal a recount from the raw rows however often events are
//! retried, replayed or written by several collectors at once.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, QueryBuilder, Type};
use time::{Date, PrimitiveDateTime};

use crate::catalog::tables::{SESSION_COLUMNS, TableKind};
use crate::catalog::{Catalog, RowBatch, SessionRow, Value};
use crate::sink::error::InsertRace;

/// The table of daily counts per service the collector keeps (the `daily_usage_summary` view
/// sums it over services).
pub const DAILY_ROLLUP: &str = "daily_usage_by_service";

/// Rows each (day, service) of [`DAILY_ROLLUP`] is split over. Every transaction adds to that
/// day's row, and holds its lock to the commit: with one row, concurrent transactions would
/// commit one at a time; over 8, two rarely meet.
const ROLLUP_SHARDS: u8 = 8;

/// A migrator for embedded `(description, sql)` migrations, numbered from 1 in order.
///
/// Migrations a newer release applied are not an error here: whether this release may run on
/// that schema is what `schema_releases` says ([`super::compat`]).
pub fn migrator(migrations: &[(&'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let mut migrator = Migrator::with_migrations(
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
    );
    migrator.set_ignore_missing(true);
    migrator
}

/// Most bind parameters in one statement (SQLite's default limit is the lowest of the two).
const MAX_BINDS: usize = 32_766;

/// Most bytes of values one event INSERT carries (after its first row): well under the
/// smallest `max_allowed_packet` a server is likely to run with (MariaDB's default is 16 MiB,
/// MySQL's 64 MiB; a statement over it is refused and the connection closed). A transaction of
/// large rows — a usage event's attributes may be megabytes — takes several statements instead.
const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// `rows` cut, in order, into statements of at most `per_statement` rows and, past each one's
/// first row, [`MAX_STATEMENT_BYTES`] of values.
fn statements<'a, 'r>(
    rows: &'a [&'r [Value]],
    per_statement: usize,
) -> impl Iterator<Item = &'a [&'r [Value]]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && n < per_statement {
            let size = row_bytes(rest[n]);
            if n > 0 && bytes + size > MAX_STATEMENT_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        let (statement, tail) = rest.split_at(n.max(1));
        rest = tail;
        Some(statement)
    })
}

/// About the bytes a row's values take on the wire (each with its length or type byte).
fn row_bytes(row: &[Value]) -> usize {
    row.iter()
        .map(|value| match value {
            Value::Null => 1,
            Value::Id(id) => id.len() + 1,
            Value::Text(text) | Value::Json(text) => text.len() + 9,
            Value::Int(_) | Value::Float(_) => 9,
            Value::Bool(_) => 2,
            Value::Time(_) => 12,
        })
        .sum()
}

/// What differs between the dialects.
pub trait Dialect: Database {
    /// Appended to a SELECT of rows a transaction is about to decide on: it waits for a
    /// concurrent writer of the same rows and keeps them until the commit (SQLite has one
    /// writer at a time and needs nothing).
    const LOCKING_READ: &'static str;
    /// Appended to a SELECT of events that an INSERT found written already: it waits for a
    /// concurrent inserter of them to commit or roll back, with a shared lock, so two writers
    /// reading the same committed event do not deadlock over upgrading their locks.
    const SHARED_READ: &'static str;
    /// Appended to a dead letter's INSERT so a repeated `event_id` is a no-op.
    const ON_DUPLICATE_DEAD_LETTER: &'static str;
    /// Appended to the session upsert, before the merges of the columns it writes.
    const ON_DUPLICATE_SESSION: &'static str;
    /// How an existing session row merges a new value, by column: `column = expression`.
    /// The upsert lists only the merges that can change the row (see [`SessionWrite`]).
    const SESSION_MERGES: &'static [(&'static str, &'static str)];
    /// `SET` expression for `duration_seconds` from `start_time` and `end_time`, run as an
    /// UPDATE after the upsert; `None` when [`Self::SESSION_MERGES`] set it themselves.
    const DURATION_UPDATE: Option<&'static str>;
    /// Appended to the heartbeat INSERT: an existing row only moves forward.
    const ON_DUPLICATE_HEARTBEAT: &'static str;
    /// Appended to the daily rollup's INSERT: an existing row adds the new counts.
    const ON_DUPLICATE_ROLLUP: &'static str;
}

impl Dialect for sqlx::MySql {
    const LOCKING_READ: &'static str = " FOR UPDATE";
    const SHARED_READ: &'static str = " LOCK IN SHARE MODE";
    // Not INSERT IGNORE: that would also turn real errors (bad values) into warnings.
    const ON_DUPLICATE_DEAD_LETTER: &'static str = " ON DUPLICATE KEY UPDATE event_id = event_id";
    const ON_DUPLICATE_SESSION: &'static str = " ON DUPLICATE KEY UPDATE ";
    const SESSION_MERGES: &'static [(&'static str, &'static str)] = &[
        (
            "start_time",
            "start_time = LEAST(start_time, VALUES(start_time))",
        ),
        (
            "last_activity",
            "last_activity = GREATEST(last_activity, VALUES(last_activity))",
        ),
        (
            "end_time",
            "end_time = COALESCE(GREATEST(end_time, VALUES(end_time)), end_time, VALUES(end_time))",
        ),
        ("user_id", "user_id = COALESCE(user_id, VALUES(user_id))"),
        (
            "user_agent",
            "user_agent = COALESCE(user_agent, VALUES(user_agent))",
        ),
        (
            "ip_address",
            "ip_address = COALESCE(ip_address, VALUES(ip_address))",
        ),
        (
            "programs_run",
            "programs_run = programs_run + VALUES(programs_run)",
        ),
        (
            "lines_executed",
            "lines_executed = lines_executed + VALUES(lines_executed)",
        ),
        (
            "errors_encountered",
            "errors_encountered = errors_encountered + VALUES(errors_encountered)",
        ),
        (
            "page_visits",
            "page_visits = page_visits + VALUES(page_visits)",
        ),
        (
            "features_used",
            "features_used = features_used + VALUES(features_used)",
        ),
        (
            "duration_seconds",
            "duration_seconds = TIMESTAMPDIFF(SECOND, LEAST(start_time, VALUES(start_time)), \
             COALESCE(GREATEST(end_time, VALUES(end_time)), end_time, VALUES(end_time)))",
        ),
    ];
    // The upsert sets the duration itself, repeating the merge expressions, so it is right
    // whether the assignments before it are seen updated (MySQL, MariaDB by default) or not
    // (SIMULTANEOUS_ASSIGNMENT).
    const DURATION_UPDATE: Option<&'static str> = None;
    const ON_DUPLICATE_HEARTBEAT: &'static str =
        " ON DUPLICATE KEY UPDATE last_beat = GREATEST(last_beat, VALUES(last_beat))";
    const ON_DUPLICATE_ROLLUP: &'static str = " ON DUPLICATE KEY UPDATE \
        sessions = sessions + VALUES(sessions), \
        page_visits = page_visits + VALUES(page_visits), \
        programs_run = programs_run + VALUES(programs_run), \
        program_errors = program_errors + VALUES(program_errors), \
        features_used = features_used + VALUES(features_used), \
        other_events = other_events + VALUES(other_events)";
}

impl Dialect for sqlx::Sqlite {
    const LOCKING_READ: &'static str = "";
    const SHARED_READ: &'static str = "";
    const ON_DUPLICATE_DEAD_LETTER: &'static str = " ON CONFLICT (service, event_id) DO NOTHING";
    const ON_DUPLICATE_SESSION: &'static str = " ON CONFLICT (service, session_id) DO UPDATE SET ";
    const SESSION_MERGES: &'static [(&'static str, &'static str)] = &[
        (
            "start_time",
            "start_time = MIN(start_time, excluded.start_time)",
        ),
        (
            "last_activity",
            "last_activity = MAX(last_activity, excluded.last_activity)",
        ),
        (
            "end_time",
            "end_time = COALESCE(MAX(end_time, excluded.end_time), end_time, excluded.end_time)",
        ),
        ("user_id", "user_id = COALESCE(user_id, excluded.user_id)"),
        (
            "user_agent",
            "user_agent = COALESCE(user_agent, excluded.user_agent)",
        ),
        (
            "ip_address",
            "ip_address = COALESCE(ip_address, excluded.ip_address)",
        ),
        (
            "programs_run",
            "programs_run = programs_run + excluded.programs_run",
        ),
        (
            "lines_executed",
            "lines_executed = lines_executed + excluded.lines_executed",
        ),
        (
            "errors_encountered",
            "errors_encountered = errors_encountered + excluded.errors_encountered",
        ),
        (
            "page_visits",
            "page_visits = page_visits + excluded.page_visits",
        ),
        (
            "features_used",
            "features_used = features_used + excluded.features_used",
        ),
    ];
    const DURATION_UPDATE: Option<&'static str> =
        Some("CAST(ROUND((julianday(end_time) - julianday(start_time)) * 86400) AS INTEGER)");
    const ON_DUPLICATE_HEARTBEAT: &'static str =
        " ON CONFLICT (instance) DO UPDATE SET last_beat = MAX(last_beat, excluded.last_beat)";
    const ON_DUPLICATE_ROLLUP: &'static str = " ON CONFLICT (`date`, service, shard) DO UPDATE SET \
        sessions = sessions + excluded.sessions, \
        page_visits = page_visits + excluded.page_visits, \
        programs_run = programs_run + excluded.programs_run, \
        program_errors = program_errors + excluded.program_errors, \
        features_used = features_used + excluded.features_used, \
        other_events = other_events + excluded.other_events";
}

/// Rows a batch committed, per table. A repeat of an already written event counts too: its
/// insert is a no-op, and counting it keeps `accepted = written + rejected` true.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// (table, new rows) for each table the batch touched.
    pub rows: Vec<(&'static str, u64)>,
    /// Sessions upserted.
    pub sessions: u64,
}

/// A future the shared SQL returns.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// Position of each common event column in an event row ([`crate::catalog::tables::EVENT_COLUMNS`]).
const EVENT_ID: usize = 0;
const SERVICE: usize = 1;
const SESSION_ID: usize = 2;
const TIMESTAMP: usize = 4;

/// How often a chunk's insert is tried again after another transaction wrote one of its events
/// between the read of what exists and the insert (each time, that other transaction finished:
/// the next read sees its rows). Past this the batch fails and the writer retries it.
const INSERT_ATTEMPTS: usize = 8;

/// Sessions in one session INSERT statement (within the bind limit).
const SESSION_CHUNK: usize = MAX_BINDS / SESSION_UPSERT.len();

/// Counts of one day and service, added to [`DAILY_ROLLUP`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DayCounts {
    /// Sessions started that day (−1 when a late event moved a session's start to an earlier
    /// day).
    pub sessions: i64,
    /// Page visits.
    pub page_visits: i64,
    /// Program runs.
    pub programs_run: i64,
    /// Program runs that failed.
    pub program_errors: i64,
    /// Feature uses.
    pub features_used: i64,
    /// Other events (`usage_events`).
    pub other_events: i64,
}

/// What a batch's newly inserted rows add to one session's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionCounts {
    /// Program runs.
    pub programs_run: i64,
    /// Lines the runs executed.
    pub lines_executed: i64,
    /// Runs that failed.
    pub errors_encountered: i64,
    /// Page visits.
    pub page_visits: i64,
    /// Feature uses.
    pub features_used: i64,
}

/// What the rows a transaction really inserted add to the summaries.
#[derive(Debug, Default)]
pub struct Tally<'a> {
    /// By (day, service), sorted: the order the rollup rows are locked in.
    pub days: BTreeMap<(Date, &'a str), DayCounts>,
    /// By (service, session id).
    pub sessions: BTreeMap<(&'a str, &'a str), SessionCounts>,
}

impl DayCounts {
    /// The counter called `name` (one of the plan's daily counters).
    fn counter(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "page_visits" => &mut self.page_visits,
            "programs_run" => &mut self.programs_run,
            "program_errors" => &mut self.program_errors,
            "features_used" => &mut self.features_used,
            "other_events" => &mut self.other_events,
            _ => return None,
        })
    }
}

impl SessionCounts {
    /// The counter called `name` (one of the plan's session counters).
    fn counter(&mut self, name: &str) -> Option<&mut i64> {
        Some(match name {
            "programs_run" => &mut self.programs_run,
            "lines_executed" => &mut self.lines_executed,
            "errors_encountered" => &mut self.errors_encountered,
            "page_visits" => &mut self.page_visits,
            "features_used" => &mut self.features_used,
            _ => return None,
        })
    }
}

/// One of a table's counts ([`usage_tracker::catalog::plan::Count`]) with its columns found in
/// the table's rows.
#[derive(Debug, Clone, Copy)]
struct Rule {
    daily: Option<&'static str>,
    session: Option<&'static str>,
    /// Position of the column whose value is added instead of 1.
    add: Option<usize>,
    /// Position of the bool column that must be false.
    when_false: Option<usize>,
}

/// The counts of `table`'s rows; a count naming a column the table does not have counts
/// nothing rather than the wrong thing (the plan guarantees the columns exist).
fn rules(table: &crate::catalog::tables::Table) -> Vec<Rule> {
    table
        .counts
        .iter()
        .filter_map(|count| {
            let at = |column: Option<&str>| match column {
                None => Ok(None),
                Some(name) => table.position(name).map(Some).ok_or(()),
            };
            Some(Rule {
                daily: count.daily,
                session: count.session,
                add: at(count.add).ok()?,
                when_false: at(count.when_false).ok()?,
            })
        })
        .collect()
}

impl<'a> Tally<'a> {
    /// Counts rows of a table that this transaction inserted.
    fn add(&mut self, rules: &[Rule], rows: &[&'a [Value]]) {
        if rules.is_empty() {
            return;
        }
        for row in rows {
            let (Value::Text(service), Value::Time(time)) = (&row[SERVICE], &row[TIMESTAMP]) else {
                continue;
            };
            let day = self
                .days
                .entry((time.date(), service.as_str()))
                .or_default();
            let mut session = match &row[SESSION_ID] {
                Value::Text(id) => Some(
                    self.sessions
                        .entry((service.as_str(), id.as_str()))
                        .or_default(),
                ),
                _ => None,
            };
            for rule in rules {
                if rule
                    .when_false
                    .is_some_and(|at| row[at] != Value::Bool(false))
                {
                    continue;
                }
                let n = match rule.add.map(|at| &row[at]) {
                    None => 1,
                    Some(Value::Int(n)) => *n,
                    Some(_) => continue,
                };
                if let Some(counter) = rule.daily.and_then(|name| day.counter(name)) {
                    *counter += n;
                }
                if let (Some(name), Some(counts)) = (rule.session, session.as_deref_mut())
                    && let Some(counter) = counts.counter(name)
                {
                    *counter += n;
                }
            }
        }
    }
}

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

    /// Inserts the rows of one table that are not written yet; returns the rows it inserted.
    fn insert_new<'a, 'r>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        columns: &'a str,
        rows: &'a [&'r [Value]],
    ) -> Boxed<'a, Vec<&'r [Value]>>
    where
        'r: 'a;

    /// Runs one multi-row INSERT of `rows` (`suffix` after the values).
    fn insert_rows<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        columns: &'a str,
        rows: &'a [&[Value]],
        suffix: &'a str,
    ) -> Boxed<'a, ()>;

    /// The ids of `rows` (all of one service) already in `table`, read with a lock.
    fn existing_ids<'a>(
        conn: &'a mut Self::Connection,
        table: &'a str,
        service: &'a str,
        rows: &'a [&[Value]],
    ) -> Boxed<'a, HashSet<Vec<u8>>>;

    /// Writes the batch's sessions and adds what they change to `tally`'s days; returns the
    /// sessions written.
    fn write_sessions<'a, 'b>(
        conn: &'a mut Self::Connection,
        sessions: &'a BTreeMap<(&'b str, &'b str), SessionRow>,
        tally: &'a mut Tally<'b>,
    ) -> Boxed<'a, u64>
    where
        'b: 'a;

    /// The start times of the sessions of `keys` (all of one service) that exist, locked.
    fn session_starts<'a>(
        conn: &'a mut Self::Connection,
        service: &'a str,
        keys: &'a [&str],
    ) -> Boxed<'a, BTreeMap<String, PrimitiveDateTime>>;

    /// Inserts (or merges, per `write`) sessions with their counters' increments.
    fn put_sessions<'a>(
        conn: &'a mut Self::Connection,
        sessions: &'a [(&str, &str, &SessionRow, SessionCounts)],
        write: SessionWrite,
    ) -> Boxed<'a, ()>;

    /// Adds the tally's days to [`DAILY_ROLLUP`], in shard `shard`.
    fn add_days<'a>(
        conn: &'a mut Self::Connection,
        tally: &'a Tally<'_>,
        shard: i64,
    ) -> Boxed<'a, ()>;

    /// Sets the durations of the batch's ended sessions, where the upsert cannot.
    fn refresh_durations<'a>(
        conn: &'a mut Self::Connection,
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

/// True for a unique-key violation: the statement changed nothing and the transaction goes on.
fn is_duplicate(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// The error for inserts into `table` that kept meeting another writer's rows.
fn race(table: &str, attempts: usize) -> sqlx::Error {
    InsertRace {
        table: table.to_owned(),
        attempts,
    }
    .into_sqlx()
}

/// The (service, event id) of an event row.
fn event_key(row: &[Value]) -> (&str, &[u8]) {
    let service = match &row[SERVICE] {
        Value::Text(s) => s.as_str(),
        _ => "",
    };
    let id: &[u8] = match &row[EVENT_ID] {
        Value::Id(id) => id,
        _ => &[],
    };
    (service, id)
}

impl<DB> Driver for DB
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    f64: for<'q> Encode<'q, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
    PrimitiveDateTime: for<'q> Encode<'q, DB> + Type<DB>,
    Date: for<'q> Encode<'q, DB> + Type<DB>,
    (Vec<u8>,): for<'r> FromRow<'r, DB::Row>,
    (String, PrimitiveDateTime): for<'r> FromRow<'r, DB::Row>,
{
    fn write_in<'a>(
        conn: &'a mut DB::Connection,
        catalog: &'a Catalog,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, Written> {
        Box::pin(async move {
            let mut written = Written::default();
            let mut tally = Tally::default();
            for (table_id, rows) in batch.tables() {
                let table = &catalog.tables()[table_id];
                debug_assert_eq!(table.kind, TableKind::Events);
                let columns = column_list(table.columns.iter().map(|c| c.name));
                let per_statement = (MAX_BINDS / table.columns.len()).max(1);
                let rules = rules(table);
                for chunk in statements(rows, per_statement) {
                    let inserted = DB::insert_new(conn, table.name, &columns, chunk).await?;
                    tally.add(&rules, &inserted);
                }
                written.rows.push((table.name, rows.len() as u64));
            }
            if !batch.sessions.is_empty() {
                written.sessions = DB::write_sessions(conn, &batch.sessions, &mut tally).await?;
                DB::refresh_durations(conn, batch).await?;
            }
            // Any shard will do (the counts add up whichever it is); a hash byte of the first
            // event's id spreads concurrent batches over them.
            let shard = batch.rows.iter().flatten().next().map_or(0, |row| {
                event_key(row).1.last().copied().unwrap_or(0) % ROLLUP_SHARDS
            });
            DB::add_days(conn, &tally, i64::from(shard)).await?;
            Ok(written)
        })
    }

    fn insert_new<'a, 'r>(
        conn: &'a mut DB::Connection,
        table: &'a str,
        columns: &'a str,
        rows: &'a [&'r [Value]],
    ) -> Boxed<'a, Vec<&'r [Value]>>
    where
        'r: 'a,
    {
        Box::pin(async move {
            // Nearly always nothing is written yet and one statement inserts every row.
            match DB::insert_rows(conn, table, columns, rows, "").await {
                Ok(()) => return Ok(rows.to_vec()),
                Err(e) if is_duplicate(&e) => {}
                Err(e) => return Err(e),
            }
            // Some event is written already (or twice in this batch): insert the others.
            let mut seen = HashSet::with_capacity(rows.len());
            let mut pending: Vec<&'r [Value]> = rows
                .iter()
                .copied()
                .filter(|row| seen.insert(event_key(row)))
                .collect();
            let mut attempt = 1;
            let mut tried = usize::MAX;
            loop {
                let mut existing: HashSet<(String, Vec<u8>)> = HashSet::new();
                let mut by_service: Vec<&'r [Value]> = pending.clone();
                by_service.sort_by(|a, b| event_key(a).cmp(&event_key(b)));
                for group in by_service.chunk_by(|a, b| event_key(a).0 == event_key(b).0) {
                    let service = event_key(group[0]).0;
                    for chunk in group.chunks(MAX_BINDS - 1) {
                        for id in DB::existing_ids(conn, table, service, chunk).await? {
                            existing.insert((service.to_owned(), id));
                        }
                    }
                }
                pending.retain(|row| {
                    let (service, id) = event_key(row);
                    !existing.contains(&(service.to_owned(), id.to_vec()))
                });
                if pending.is_empty() {
                    return Ok(pending);
                }
                // Nothing new found written since the last try (the rows collide with each
                // other as the table's key compares them, e.g. service names differing only in
                // case), or still colliding after several tries: one row at a time.
                if pending.len() == tried || attempt >= INSERT_ATTEMPTS {
                    break;
                }
                tried = pending.len();
                match DB::insert_rows(conn, table, columns, &pending, "").await {
                    Ok(()) => return Ok(pending),
                    Err(e) if is_duplicate(&e) => attempt += 1,
                    Err(e) => return Err(e),
                }
            }
            // A row that collides is written already if the table's key finds it (then it is
            // neither inserted nor counted); one that collides with something else (another
            // unique key) is the row's own fault, and the writer sets it aside.
            let mut inserted = Vec::with_capacity(pending.len());
            for row in pending {
                match DB::insert_rows(conn, table, columns, &[row], "").await {
                    Ok(()) => inserted.push(row),
                    Err(e) if is_duplicate(&e) => {
                        let service = event_key(row).0;
                        if DB::existing_ids(conn, table, service, &[row])
                            .await?
                            .is_empty()
                        {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(inserted)
        })
    }

    fn insert_rows<'a>(
        conn: &'a mut DB::Connection,
        table: &'a str,
        columns: &'a str,
        rows: &'a [&[Value]],
        suffix: &'a str,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            let mut query = QueryBuilder::<DB>::new(format!("INSERT INTO `{table}` ({columns}) "));
            query.push_values(rows, |mut list, row| {
                for value in row.iter() {
                    match value {
                        Value::Null => list.push("NULL"),
                        Value::Id(id) => list.push_bind(&id[..]),
                        Value::Text(text) | Value::Json(text) => list.push_bind(text.as_str()),
                        Value::Int(int) => list.push_bind(*int),
                        Value::Float(float) => list.push_bind(*float),
                        Value::Bool(b) => list.push_bind(*b),
                        Value::Time(time) => list.push_bind(*time),
                    };
                }
            });
            query.push(suffix);
            query.build().execute(&mut *conn).await?;
            Ok(())
        })
    }

    fn existing_ids<'a>(
        conn: &'a mut DB::Connection,
        table: &'a str,
        service: &'a str,
        rows: &'a [&[Value]],
    ) -> Boxed<'a, HashSet<Vec<u8>>> {
        Box::pin(async move {
            let mut query =
                QueryBuilder::<DB>::new(format!("SELECT event_id FROM `{table}` WHERE service = "));
            query.push_bind(service);
            query.push(" AND event_id IN (");
            let mut ids = query.separated(", ");
            for row in rows {
                ids.push_bind(event_key(row).1);
            }
            query.push(")");
            query.push(DB::SHARED_READ);
            let found: Vec<(Vec<u8>,)> = query.build_query_as().fetch_all(&mut *conn).await?;
            Ok(found.into_iter().map(|(id,)| id).collect())
        })
    }

    fn write_sessions<'a, 'b>(
        conn: &'a mut DB::Connection,
        sessions: &'a BTreeMap<(&'b str, &'b str), SessionRow>,
        tally: &'a mut Tally<'b>,
    ) -> Boxed<'a, u64>
    where
        'b: 'a,
    {
        Box::pin(async move {
            let entries: Vec<(&'b str, &'b str, &SessionRow)> = sessions
                .iter()
                .map(|((service, id), row)| (*service, *id, row))
                .collect();
            let counts = |service: &str, id: &str| {
                tally
                    .sessions
                    .get(&(service, id))
                    .copied()
                    .unwrap_or_default()
            };
            let mut starts: BTreeMap<(&'b str, &'b str), PrimitiveDateTime> = BTreeMap::new();
            let mut pending: Vec<(&'b str, &'b str, &SessionRow)> = entries.clone();
            let mut created: HashSet<(&'b str, &'b str)> = HashSet::new();
            let mut attempt = 1;
            loop {
                // The sessions that exist, locked (in key order) to the commit: their start
                // cannot move under this transaction.
                for group in pending.chunk_by(|a, b| a.0 == b.0) {
                    let service = group[0].0;
                    let ids: Vec<&str> = group.iter().map(|(_, id, _)| *id).collect();
                    for chunk in ids.chunks(MAX_BINDS - 1) {
                        for (id, start) in DB::session_starts(conn, service, chunk).await? {
                            if let Some((_, key, _)) = group.iter().find(|(_, k, _)| *k == id) {
                                starts.insert((service, key), start);
                            }
                        }
                    }
                }
                let new: Vec<_> = pending
                    .iter()
                    .filter(|(service, id, _)| !starts.contains_key(&(*service, *id)))
                    .map(|(service, id, row)| (*service, *id, *row, counts(service, id)))
                    .collect();
                if new.is_empty() {
                    break;
                }
                // One statement per chunk, so that a duplicate in one chunk leaves the earlier
                // chunks known as inserted by this transaction: they are tallied here and not
                // read back as existing (which would add their counts twice).
                let mut duplicate = false;
                for chunk in new.chunks(SESSION_CHUNK) {
                    match DB::put_sessions(conn, chunk, SessionWrite::Insert).await {
                        Ok(()) => {
                            for (service, id, row, _) in chunk {
                                tally
                                    .days
                                    .entry((row.start_time.date(), service))
                                    .or_default()
                                    .sessions += 1;
                                created.insert((*service, *id));
                            }
                        }
                        // Another transaction created one of them meanwhile: read again.
                        Err(e) if is_duplicate(&e) => {
                            duplicate = true;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
                // What is left: the sessions neither created here nor known to exist.
                pending.retain(|(service, id, _)| {
                    !created.contains(&(*service, *id)) && !starts.contains_key(&(*service, *id))
                });
                if !duplicate {
                    break;
                }
                if attempt >= INSERT_ATTEMPTS {
                    // Not the rows' fault: the writer retries the batch, with backoff.
                    return Err(race("ide_sessions", attempt));
                }
                attempt += 1;
            }
            let mut start_moves = false;
            let existing: Vec<_> = entries
                .iter()
                .filter_map(|(service, id, row)| {
                    let old = starts.get(&(*service, *id))?;
                    start_moves |= row.start_time < *old;
                    // A late event moves the session's start to an earlier day.
                    if row.start_time.date() < old.date() {
                        tally
                            .days
                            .entry((old.date(), service))
                            .or_default()
                            .sessions -= 1;
                        tally
                            .days
                            .entry((row.start_time.date(), service))
                            .or_default()
                            .sessions += 1;
                    }
                    Some((*service, *id, *row, counts(service, id)))
                })
                .collect();
            if !existing.is_empty() {
                DB::put_sessions(conn, &existing, SessionWrite::Merge { start_moves }).await?;
            }
            Ok(sessions.len() as u64)
        })
    }

    fn session_starts<'a>(
        conn: &'a mut DB::Connection,
        service: &'a str,
        keys: &'a [&str],
    ) -> Boxed<'a, BTreeMap<String, PrimitiveDateTime>> {
        Box::pin(async move {
            let mut query = QueryBuilder::<DB>::new(
                "SELECT session_id, start_time FROM `ide_sessions` WHERE service = ",
            );
            query.push_bind(service);
            query.push(" AND session_id IN (");
            let mut ids = query.separated(", ");
            for id in keys {
                ids.push_bind(*id);
            }
            query.push(")");
            query.push(DB::LOCKING_READ);
            let found: Vec<(String, PrimitiveDateTime)> =
                query.build_query_as().fetch_all(&mut *conn).await?;
            Ok(found.into_iter().collect())
        })
    }

    fn put_sessions<'a>(
        conn: &'a mut DB::Connection,
        sessions: &'a [(&str, &str, &SessionRow, SessionCounts)],
        write: SessionWrite,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            for chunk in sessions.chunks(SESSION_CHUNK) {
                let columns = write.columns(chunk);
                let mut query = QueryBuilder::<DB>::new(format!(
                    "INSERT INTO `ide_sessions` ({}) ",
                    column_list(columns.iter().map(|c| c.name()))
                ));
                query.push_values(chunk, |mut list, (service, id, s, counts)| {
                    // Each value is chosen by its column's name, so the column list and the
                    // values cannot drift apart.
                    for column in &columns {
                        let bound: Option<SessionValue<'_>> = match column {
                            SessionColumn::SessionId => Some(SessionValue::Text(id)),
                            SessionColumn::Service => Some(SessionValue::Text(service)),
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
                            SessionColumn::ProgramsRun => {
                                Some(SessionValue::Int(counts.programs_run))
                            }
                            SessionColumn::LinesExecuted => {
                                Some(SessionValue::Int(counts.lines_executed))
                            }
                            SessionColumn::ErrorsEncountered => {
                                Some(SessionValue::Int(counts.errors_encountered))
                            }
                            SessionColumn::PageVisits => {
                                Some(SessionValue::Int(counts.page_visits))
                            }
                            SessionColumn::FeaturesUsed => {
                                Some(SessionValue::Int(counts.features_used))
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
                if let SessionWrite::Merge { start_moves } = write {
                    let merges: Vec<&str> = columns
                        .iter()
                        .filter(|c| **c != SessionColumn::StartTime || start_moves)
                        .filter_map(|c| {
                            let merge = DB::SESSION_MERGES.iter().find(|(n, _)| *n == c.name());
                            merge.map(|(_, merge)| *merge)
                        })
                        .collect();
                    query.push(DB::ON_DUPLICATE_SESSION);
                    query.push(merges.join(", "));
                }
                query.build().execute(&mut *conn).await?;
            }
            Ok(())
        })
    }

    fn add_days<'a>(
        conn: &'a mut DB::Connection,
        tally: &'a Tally<'_>,
        shard: i64,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            let days: Vec<_> = tally
                .days
                .iter()
                .filter(|(_, counts)| **counts != DayCounts::default())
                .collect();
            for chunk in days.chunks(MAX_BINDS / 9) {
                let mut query = QueryBuilder::<DB>::new(format!(
                    "INSERT INTO `{DAILY_ROLLUP}` (`date`, service, shard, sessions, page_visits, \
                     programs_run, program_errors, features_used, other_events) "
                ));
                query.push_values(chunk, |mut list, ((day, service), c)| {
                    list.push_bind(*day)
                        .push_bind(*service)
                        .push_bind(shard)
                        .push_bind(c.sessions)
                        .push_bind(c.page_visits)
                        .push_bind(c.programs_run)
                        .push_bind(c.program_errors)
                        .push_bind(c.features_used)
                        .push_bind(c.other_events);
                });
                query.push(DB::ON_DUPLICATE_ROLLUP);
                query.build().execute(&mut *conn).await?;
            }
            Ok(())
        })
    }

    fn refresh_durations<'a>(
        conn: &'a mut DB::Connection,
        batch: &'a RowBatch<'_>,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
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

/// The `ide_sessions` columns a session insert or upsert writes: every one; the counters carry
/// the increments of the batch's newly inserted rows.
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
    ProgramsRun,
    LinesExecuted,
    ErrorsEncountered,
    PageVisits,
    FeaturesUsed,
}

const SESSION_UPSERT: [SessionColumn; 14] = [
    SessionColumn::SessionId,
    SessionColumn::Service,
    SessionColumn::UserId,
    SessionColumn::StartTime,
    SessionColumn::LastActivity,
    SessionColumn::EndTime,
    SessionColumn::DurationSeconds,
    SessionColumn::UserAgent,
    SessionColumn::IpAddress,
    SessionColumn::ProgramsRun,
    SessionColumn::LinesExecuted,
    SessionColumn::ErrorsEncountered,
    SessionColumn::PageVisits,
    SessionColumn::FeaturesUsed,
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
            SessionColumn::ProgramsRun => "programs_run",
            SessionColumn::LinesExecuted => "lines_executed",
            SessionColumn::ErrorsEncountered => "errors_encountered",
            SessionColumn::PageVisits => "page_visits",
            SessionColumn::FeaturesUsed => "features_used",
        };
        debug_assert!(SESSION_COLUMNS.iter().any(|c| c.name == name));
        name
    }
}

/// How a session statement treats sessions that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionWrite {
    /// New sessions: every column; a session that exists fails the statement.
    Insert,
    /// Sessions this transaction found and locked: only the columns whose merge can change
    /// them are written and merged (a page visit adds to `page_visits` and moves
    /// `last_activity`; it cannot change `end_time` or the other counters), which leaves the
    /// server less to parse, bind and evaluate per session.
    Merge {
        /// Whether some session's start moves earlier (a late event): then its start, end and
        /// duration are merged as well.
        start_moves: bool,
    },
}

impl SessionWrite {
    /// The columns a statement for `chunk` writes, in [`SESSION_UPSERT`]'s order.
    fn columns(self, chunk: &[(&str, &str, &SessionRow, SessionCounts)]) -> Vec<SessionColumn> {
        let SessionWrite::Merge { start_moves } = self else {
            return SESSION_UPSERT.to_vec();
        };
        let any = |f: &dyn Fn(&SessionRow, &SessionCounts) -> bool| {
            chunk.iter().any(|(_, _, row, counts)| f(row, counts))
        };
        let ends = any(&|row, _| row.end_time.is_some());
        SESSION_UPSERT
            .into_iter()
            .filter(|column| match column {
                // The key, and what an INSERT needs even when the row exists.
                SessionColumn::SessionId
                | SessionColumn::Service
                | SessionColumn::StartTime
                | SessionColumn::LastActivity => true,
                SessionColumn::EndTime | SessionColumn::DurationSeconds => ends || start_moves,
                SessionColumn::UserId => any(&|row, _| row.user_id.is_some()),
                SessionColumn::UserAgent => any(&|row, _| row.user_agent.is_some()),
                SessionColumn::IpAddress => any(&|row, _| row.ip_address.is_some()),
                SessionColumn::ProgramsRun => any(&|_, c| c.programs_run != 0),
                SessionColumn::LinesExecuted => any(&|_, c| c.lines_executed != 0),
                SessionColumn::ErrorsEncountered => any(&|_, c| c.errors_encountered != 0),
                SessionColumn::PageVisits => any(&|_, c| c.page_visits != 0),
                SessionColumn::FeaturesUsed => any(&|_, c| c.features_used != 0),
            })
            .collect()
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
    #[test]
    fn large_rows_are_written_in_statements_within_the_byte_bound() {
        use super::{MAX_STATEMENT_BYTES, Value, row_bytes, statements};
        let row = |bytes: usize| vec![Value::Id([7; 16]), Value::Json("x".repeat(bytes))];
        // 1.5 MiB rows: two fit a statement, a third does not; small rows fill it up to the
        // row bound; one row over the byte bound still goes alone.
        let rows: Vec<Vec<Value>> = [1536, 1536, 1536, 1, 1, 1, 1, 1, 5000, 1]
            .into_iter()
            .map(|kib| row(kib << 10))
            .collect();
        let refs: Vec<&[Value]> = rows.iter().map(Vec::as_slice).collect();
        let cut: Vec<usize> = statements(&refs, 4).map(<[_]>::len).collect();
        assert_eq!(cut, vec![2, 4, 2, 1, 1]);
        for statement in statements(&refs, 4) {
            let bytes: usize = statement.iter().map(|r| row_bytes(r)).sum();
            assert!(statement.len() == 1 || bytes <= MAX_STATEMENT_BYTES);
        }
        let again: Vec<&[Value]> = statements(&refs, 4).flatten().copied().collect();
        assert_eq!(again, refs, "every row once, in order");
        assert_eq!(statements(&refs[..0], 4).count(), 0);
    }

    use super::*;

    #[test]
    fn the_common_event_columns_are_where_the_tally_reads_them() {
        let names = crate::catalog::tables::EVENT_COLUMNS.map(|c| c.name);
        assert_eq!(names[EVENT_ID], "event_id");
        assert_eq!(names[SERVICE], "service");
        assert_eq!(names[SESSION_ID], "session_id");
        assert_eq!(names[TIMESTAMP], "timestamp");
    }

    #[test]
    fn every_merge_names_a_session_column_and_every_merged_column_has_one() {
        fn check<DB: Dialect>(duration_merged: bool) {
            for (column, merge) in DB::SESSION_MERGES {
                assert!(
                    SESSION_UPSERT.iter().any(|c| c.name() == *column),
                    "{column}"
                );
                assert!(merge.starts_with(&format!("{column} = ")), "{merge}");
            }
            for column in SESSION_UPSERT {
                let key = matches!(column, SessionColumn::SessionId | SessionColumn::Service);
                let merged = DB::SESSION_MERGES.iter().any(|(c, _)| *c == column.name());
                let expected =
                    !key && (column != SessionColumn::DurationSeconds || duration_merged);
                assert_eq!(merged, expected, "{column:?}");
            }
        }
        check::<sqlx::MySql>(true);
        check::<sqlx::Sqlite>(false);
    }

    #[test]
    fn a_merge_writes_only_the_columns_that_can_change_the_session() {
        use time::macros::datetime;
        let at = datetime!(2026-11-30 12:00);
        let visit = SessionRow {
            service: "ide".into(),
            user_id: None,
            start_time: at,
            last_activity: at,
            end_time: None,
            user_agent: Some("Firefox".into()),
            ip_address: None,
        };
        let visits = SessionCounts {
            page_visits: 3,
            ..SessionCounts::default()
        };
        let chunk = [("ide", "s1", &visit, visits)];
        use SessionColumn::*;
        assert_eq!(
            SessionWrite::Merge { start_moves: false }.columns(&chunk),
            [
                SessionId,
                Service,
                StartTime,
                LastActivity,
                UserAgent,
                PageVisits
            ]
        );
        // A late event: the start, end and duration are merged too.
        assert_eq!(
            SessionWrite::Merge { start_moves: true }.columns(&chunk),
            [
                SessionId,
                Service,
                StartTime,
                LastActivity,
                EndTime,
                DurationSeconds,
                UserAgent,
                PageVisits
            ]
        );
        let ended = SessionRow {
            end_time: Some(at),
            ..visit.clone()
        };
        let run = SessionCounts {
            programs_run: 1,
            errors_encountered: 1,
            ..SessionCounts::default()
        };
        let chunk = [("ide", "s1", &visit, visits), ("ide", "s2", &ended, run)];
        assert_eq!(
            SessionWrite::Merge { start_moves: false }.columns(&chunk),
            [
                SessionId,
                Service,
                StartTime,
                LastActivity,
                EndTime,
                DurationSeconds,
                UserAgent,
                ProgramsRun,
                ErrorsEncountered,
                PageVisits
            ]
        );
        assert_eq!(SessionWrite::Insert.columns(&chunk), SESSION_UPSERT);
    }

    #[test]
    fn a_session_write_names_every_session_column_once() {
        for column in SESSION_UPSERT {
            assert!(
                SESSION_COLUMNS.iter().any(|c| c.name == column.name()),
                "{column:?}"
            );
        }
        for column in SESSION_COLUMNS {
            let named = SESSION_UPSERT.iter().filter(|c| c.name() == column.name);
            assert_eq!(named.count(), 1, "{}", column.name);
        }
    }
}
