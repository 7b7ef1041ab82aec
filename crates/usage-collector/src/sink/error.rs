//! Database errors: transient (retry) or permanent, and never carrying a secret.

use sqlx::error::DatabaseError;

/// A batch could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// Retrying the same batch later may succeed (connection lost, deadlock, timeout, …).
    pub transient: bool,
    /// Low-cardinality reason label for metrics.
    pub reason: &'static str,
    /// The database's own error text, secrets removed.
    pub message: String,
}

/// Every reason label [`WriteError::classify`] gives (so metrics can start each at zero).
pub const REASONS: [&str; 15] = [
    "connection",
    "tls",
    "pool_timeout",
    "shutdown",
    "protocol",
    "other",
    "deadlock",
    "lock_wait_timeout",
    "too_many_connections",
    "read_only",
    "missing_table",
    "missing_column",
    "permission",
    "rejected",
    "locked",
];

impl WriteError {
    /// Classifies a driver error.
    pub fn classify(error: &sqlx::Error, redactor: &Redactor) -> Self {
        let (transient, reason) = match error {
            sqlx::Error::Io(_) => (true, "connection"),
            sqlx::Error::Tls(_) => (true, "tls"),
            sqlx::Error::PoolTimedOut => (true, "pool_timeout"),
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => (true, "shutdown"),
            sqlx::Error::Protocol(_) => (true, "protocol"),
            sqlx::Error::Database(db) => classify_database(db.as_ref()),
            _ => (false, "other"),
        };
        WriteError {
            transient,
            reason,
            message: redactor.redact(&error.to_string()),
        }
    }
}

/// MySQL server error numbers and SQLite result codes that a retry can get past.
fn classify_database(error: &dyn DatabaseError) -> (bool, &'static str) {
    if let Some(mysql) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return match mysql.number() {
            1213 => (true, "deadlock"),
            1205 => (true, "lock_wait_timeout"),
            1040 | 1203 => (true, "too_many_connections"),
            1290 | 1836 | 1792 => (true, "read_only"),
            1053 | 1077 | 1152 | 1153 | 1154 | 1155 | 1156 | 1157 | 1158 | 1159 | 1160 | 1161
            | 1927 | 2006 | 2013 => (true, "connection"),
            1146 => (false, "missing_table"),
            1054 => (false, "missing_column"),
            1142 | 1143 | 1044 | 1045 => (false, "permission"),
            _ => (false, "rejected"),
        };
    }
    match error.code().as_deref() {
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
        Some(code) if matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6)) => {
            (true, "locked")
        }
        _ => (false, "rejected"),
    }
}

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
    fn io_errors_are_transient() {
        let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let w = WriteError::classify(&e, &Redactor::default());
        assert!(w.transient);
        assert_eq!(w.reason, "connection");
    }
}
