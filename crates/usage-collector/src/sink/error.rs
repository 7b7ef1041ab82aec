//! Database errors, described by what happened ([`ErrorKind`]) — never by what to do about it,
//! which is the writer's retry policy (`writer::retry`) — and never carrying a secret.
//!
//! Only the sink knows its drivers' error codes, so it is the sink that reads them: MySQL server
//! error numbers and SQLSTATEs, SQLite result codes, and the driver's own transport errors.

use sqlx::error::DatabaseError;

/// What kind of failure a database operation met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be made, was lost, or the server refused more of them.
    Connection,
    /// The operation took too long: the collector's own timeout, the server's statement
    /// timeout, a lock wait timeout, or the query was killed.
    Timeout,
    /// Two transactions collided (a deadlock, or on a Galera cluster a certification
    /// conflict between transactions of two nodes); the same batch normally passes at once.
    Conflict,
    /// The transaction is larger than the database takes in one (a Galera cluster's write-set
    /// limits, `wsrep_max_ws_rows` and `wsrep_max_ws_size`): nothing is wrong with the rows,
    /// and the same rows pass in smaller transactions.
    TooLarge,
    /// The server cannot take writes for now: read-only, table or disk full, a failed commit,
    /// a busy or locked SQLite file, an I/O error.
    ServerState,
    /// The schema or the permissions are not what the catalogue needs (a missing table or
    /// column, no INSERT grant): an operator must act; the rows are fine.
    Schema,
    /// The database refused a value of the row itself: too long, out of range, not valid JSON,
    /// a constraint (SQLSTATE classes 22 and 23; SQLite CONSTRAINT, MISMATCH, TOOBIG).
    RowValue,
    /// Anything else.
    Unknown,
}

/// A database operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What happened.
    pub kind: ErrorKind,
    /// Low-cardinality reason label for metrics.
    pub reason: &'static str,
    /// The database's own error text, secrets removed.
    pub message: String,
}

/// Every reason label a [`SinkError`] carries (so metrics can start each at zero).
pub const REASONS: [&str; 27] = [
    "connection",
    "node_not_ready",
    "tls",
    "pool_timeout",
    "shutdown",
    "protocol",
    "too_many_connections",
    "timeout",
    "statement_timeout",
    "lock_wait_timeout",
    "query_killed",
    "deadlock",
    "certification_conflict",
    "write_conflict",
    "insert_race",
    "write_set_too_large",
    "read_only",
    "table_full",
    "disk_full",
    "commit_failed",
    "locked",
    "io",
    "missing_table",
    "missing_column",
    "permission",
    "row_value",
    "unknown",
];

/// Which server the error came from, where that changes what an error number means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Server {
    /// One server (or not known yet).
    #[default]
    Single,
    /// A node of a Galera cluster (`@@wsrep_on`): a deadlock error at a transaction's
    /// statements or its COMMIT is a certification conflict with another node's transaction.
    Galera,
}

impl SinkError {
    /// Describes a driver error, with `redactor` removing secrets from its text.
    pub fn classify(error: &sqlx::Error, redactor: &Redactor) -> Self {
        Self::classify_on(error, redactor, Server::Single)
    }

    /// [`SinkError::classify`] for an error from `server`.
    pub fn classify_on(error: &sqlx::Error, redactor: &Redactor, server: Server) -> Self {
        let (kind, reason) = match error {
            sqlx::Error::Io(_) => (ErrorKind::Connection, "connection"),
            sqlx::Error::Tls(_) => (ErrorKind::Connection, "tls"),
            sqlx::Error::PoolTimedOut => (ErrorKind::Connection, "pool_timeout"),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
                (ErrorKind::Connection, "shutdown")
            }
            sqlx::Error::Protocol(_) => (ErrorKind::Connection, "protocol"),
            sqlx::Error::Database(db) => classify_database(db.as_ref(), server),
            _ => (ErrorKind::Unknown, "unknown"),
        };
        SinkError {
            kind,
            reason,
            message: redactor.redact(&error.to_string()),
        }
    }

    /// The collector's own deadline for an operation passed.
    pub fn timed_out(what: &str, after: std::time::Duration) -> Self {
        SinkError {
            kind: ErrorKind::Timeout,
            reason: "timeout",
            message: format!("{what} did not finish within {after:?}"),
        }
    }
}

/// MySQL server error numbers and SQLSTATEs; SQLite primary result codes.
fn classify_database(error: &dyn DatabaseError, server: Server) -> (ErrorKind, &'static str) {
    use ErrorKind::*;
    if error.try_downcast_ref::<InsertRace>().is_some() {
        return (Conflict, "insert_race");
    }
    if error.try_downcast_ref::<NodeNotReady>().is_some() {
        return (Connection, "node_not_ready");
    }
    if let Some(mysql) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        if let Some(class) = classify_galera(mysql.number(), mysql.message(), server) {
            return class;
        }
        if let Some(class) = by_number(mysql.number()) {
            return class;
        }
        // SQLSTATE class 22 (data exception) and 23 (integrity constraint violation) are about
        // the values of the row being written.
        return match mysql.code() {
            Some(state) if state.starts_with("22") || state.starts_with("23") => {
                (RowValue, "row_value")
            }
            _ => (Unknown, "unknown"),
        };
    }
    // SQLite: the primary result code is the low byte of the extended one.
    match error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|c| c & 0xff)
    {
        Some(5 | 6) => (ServerState, "locked"),
        Some(13) => (ServerState, "disk_full"),
        Some(10 | 11 | 14 | 15) => (ServerState, "io"),
        Some(8) => (ServerState, "read_only"),
        // TOOBIG, CONSTRAINT, MISMATCH.
        Some(18..=20) => (RowValue, "row_value"),
        Some(1) if error.message().contains("no such table") => (Schema, "missing_table"),
        Some(1) if error.message().contains("no such column") => (Schema, "missing_column"),
        _ => (Unknown, "unknown"),
    }
}

/// What a MySQL (or MariaDB, or TiDB) server error number means, when the number alone says.
fn by_number(number: u16) -> Option<(ErrorKind, &'static str)> {
    use ErrorKind::*;
    match number {
        1040 | 1203 => Some((Connection, "too_many_connections")),
        1053 | 1077 | 1152 | 1153 | 1154 | 1155 | 1156 | 1157 | 1158 | 1159 | 1160 | 1161
        | 1927 | 2006 | 2013 => Some((Connection, "connection")),
        1969 | 3024 => Some((Timeout, "statement_timeout")),
        1205 => Some((Timeout, "lock_wait_timeout")),
        1317 => Some((Timeout, "query_killed")),
        1213 => Some((Conflict, "deadlock")),
        // TiDB in optimistic mode: another transaction committed the same keys first; the
        // conflict shows at COMMIT, and the same batch passes on a retry.
        9007 => Some((Conflict, "write_conflict")),
        1290 | 1836 | 1792 => Some((ServerState, "read_only")),
        1114 => Some((ServerState, "table_full")),
        1021 => Some((ServerState, "disk_full")),
        1180 | 1181 => Some((ServerState, "commit_failed")),
        1146 => Some((Schema, "missing_table")),
        1054 => Some((Schema, "missing_column")),
        1142 | 1143 | 1044 | 1045 => Some((Schema, "permission")),
        _ => None,
    }
}

/// What a Galera node's answers mean (the error numbers they reuse are told apart by their
/// text, which the server fixes):
/// - 1047 `WSREP has not yet prepared node for application use`: the node is out of the
///   primary component (isolated, or still joining), and refuses every statement that reads
///   or writes a table until it is back: `node_not_ready`, a connection failure (retried, and
///   a reason to move to another node);
/// - 1180 `… Not connected to Primary Component` (the moments between losing the group and
///   knowing it): the same;
/// - 1180 `wsrep_max_ws_rows exceeded` and 1105 `Maximum writeset size exceeded`: the
///   transaction's write set is over the cluster's limits: `write_set_too_large`;
/// - 1213 on a Galera node: a certification conflict (two nodes' transactions changed the
///   same rows; the later one is refused at COMMIT or aborted by the earlier one's
///   replication), not a lock cycle: `certification_conflict`.
fn classify_galera(
    number: u16,
    message: &str,
    server: Server,
) -> Option<(ErrorKind, &'static str)> {
    let wsrep = message.contains("WSREP") || message.contains("wsrep");
    Some(match number {
        1047 if wsrep => (ErrorKind::Connection, "node_not_ready"),
        1180 if message.contains("wsrep_max_ws_rows") => {
            (ErrorKind::TooLarge, "write_set_too_large")
        }
        1180 if message.contains("Primary Component") || wsrep => {
            (ErrorKind::Connection, "node_not_ready")
        }
        1105 if message.contains("Maximum writeset size exceeded") => {
            (ErrorKind::TooLarge, "write_set_too_large")
        }
        1213 if server == Server::Galera => (ErrorKind::Conflict, "certification_conflict"),
        _ => return None,
    })
}

/// The node a connection reached is not ready for the collector's statements: a Galera node
/// outside the primary component (`wsrep_ready` is `OFF`), found by the collector's own check
/// rather than by an error the server gave. Classified as `node_not_ready`.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database node {node} is not ready: it is not part of the cluster's primary component (wsrep_ready = {ready})"
)]
pub struct NodeNotReady {
    /// `host:port` of the node.
    pub node: String,
    /// What `wsrep_ready` said.
    pub ready: String,
}

impl NodeNotReady {
    /// The answer as a driver error, so it travels the sink's `sqlx::Error` paths.
    pub fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Database(Box::new(self))
    }
}

/// Makes one of the collector's own errors a driver error with `message`, of kind `Other` (not
/// a unique violation: the sink's own duplicate handling must not take it for one).
macro_rules! database_error {
    ($error:ty, $message:literal) => {
        impl DatabaseError for $error {
            fn message(&self) -> &str {
                $message
            }

            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }

            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }

            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }

            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
    };
}

database_error!(
    NodeNotReady,
    "the database node is not part of the cluster's primary component"
);

/// An insert of new sessions kept meeting sessions that another writer created between this
/// transaction's read of what exists and its insert, as many times as the sink tries (two
/// collectors writing the same sessions at once; event rows fall back to one row at a time
/// instead). Nothing is wrong with the rows: the writer retries the batch with backoff
/// ([`ErrorKind::Conflict`], reason `insert_race`), and the other writer is done by then.
#[derive(Debug, thiserror::Error)]
#[error(
    "another writer kept inserting the same events into `{table}` ({attempts} attempts); retrying"
)]
pub struct InsertRace {
    /// The table the inserts went to.
    pub table: String,
    /// How many inserts met another writer's rows.
    pub attempts: usize,
}

impl InsertRace {
    /// The race as a driver error, so it travels the sink's `sqlx::Error` paths and is
    /// classified by [`SinkError::classify`].
    pub fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Database(Box::new(self))
    }
}

database_error!(
    InsertRace,
    "another writer kept inserting the same events; retrying"
);

/// Removes secrets from text before it reaches a log line, an error or a client.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for these secrets (empty ones are ignored).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        Self {
            secrets: secrets.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_occurrence() {
        let r = Redactor::new(["pw".to_owned(), String::new()]);
        assert_eq!(r.redact("a pw b pw"), "a *** b ***");
        assert_eq!(r.redact("nothing"), "nothing");
    }

    #[test]
    fn io_errors_are_connection_failures() {
        let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let w = SinkError::classify(&e, &Redactor::default());
        assert_eq!(w.kind, ErrorKind::Connection);
        assert_eq!(w.reason, "connection");
    }

    #[test]
    fn a_lasting_insert_race_is_a_conflict_the_writer_retries() {
        let e = InsertRace {
            table: "page_visits".into(),
            attempts: 8,
        }
        .into_sqlx();
        let w = SinkError::classify(&e, &Redactor::default());
        assert_eq!(w.kind, ErrorKind::Conflict);
        assert_eq!(w.reason, "insert_race");
        assert!(REASONS.contains(&w.reason));
        assert!(
            w.message
                .contains("another writer kept inserting the same events into `page_visits`"),
            "{}",
            w.message
        );
        assert_eq!(
            crate::writer::retry::decide(w.kind),
            crate::writer::retry::Decision::Retry
        );
    }

    /// The texts are what MariaDB 10.11 with Galera 4 answered in the cluster tests.
    #[test]
    fn galera_answers_are_told_apart_by_their_text() {
        use ErrorKind::*;
        let galera = |number, message: &str| classify_galera(number, message, Server::Galera);
        assert_eq!(
            galera(1047, "WSREP has not yet prepared node for application use"),
            Some((Connection, "node_not_ready"))
        );
        assert_eq!(
            galera(
                1180,
                "Error while appending streaming replication fragment(provider status: Not \
                 connected to Primary Component)"
            ),
            Some((Connection, "node_not_ready"))
        );
        assert_eq!(
            galera(1180, "wsrep_max_ws_rows exceeded"),
            Some((TooLarge, "write_set_too_large"))
        );
        assert_eq!(
            galera(1105, "Maximum writeset size exceeded"),
            Some((TooLarge, "write_set_too_large"))
        );
        assert_eq!(
            galera(
                1213,
                "Deadlock found when trying to get lock; try restarting transaction"
            ),
            Some((Conflict, "certification_conflict"))
        );
        // On one server a deadlock is a deadlock, and other texts keep their old meaning.
        let single = |number, message: &str| classify_galera(number, message, Server::Single);
        assert_eq!(single(1213, "Deadlock found"), None);
        assert_eq!(single(1180, "Got error 6 during COMMIT"), None);
        assert_eq!(single(1047, "Unknown command"), None);
        assert_eq!(single(1105, "Unknown error"), None);
        let not_ready = NodeNotReady {
            node: "db-2:3306".into(),
            ready: "OFF".into(),
        };
        let w = SinkError::classify(&not_ready.into_sqlx(), &Redactor::default());
        assert_eq!((w.kind, w.reason), (Connection, "node_not_ready"));
        assert!(w.message.contains("db-2:3306"), "{}", w.message);
        for (kind, reason) in [
            (Connection, "node_not_ready"),
            (TooLarge, "write_set_too_large"),
            (Conflict, "certification_conflict"),
        ] {
            assert!(REASONS.contains(&reason), "{reason}");
            assert_ne!(
                crate::writer::retry::decide(kind),
                crate::writer::retry::Decision::Refused,
                "{reason} is never final"
            );
        }
    }

    #[test]
    fn conflicts_are_retried_under_the_engine_s_own_reason() {
        assert_eq!(by_number(1213), Some((ErrorKind::Conflict, "deadlock")));
        assert_eq!(
            by_number(9007),
            Some((ErrorKind::Conflict, "write_conflict"))
        );
        assert!(REASONS.contains(&"write_conflict"));
        assert_eq!(
            by_number(1062),
            None,
            "a duplicate key is the row's (SQLSTATE 23000)"
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let e = sqlx::Error::RowNotFound;
        assert!(REASONS.contains(&SinkError::classify(&e, &Redactor::default()).reason));
        assert!(REASONS.contains(&SinkError::timed_out("x", std::time::Duration::ZERO).reason));
    }
}
