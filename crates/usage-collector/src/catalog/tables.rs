//! The tables the collector writes, derived from the tracking plan
//! ([`usage_tracker::catalog::plan`]).
//!
//! Every event table starts with the same five columns ([`EVENT_COLUMNS`]); the plan adds each
//! event's own, and says what its rows add to the summaries. `ide_sessions` is the one
//! aggregate table: one row per session, upserted. `usage_events` takes every event the plan
//! does not declare.

use usage_tracker::catalog::plan::{self, Count, Kind, Plan};
use usage_tracker::catalog::{self, tables};

/// Position of a table in [`crate::catalog::Catalog::tables`].
pub type TableId = usize;

/// A column's type, independent of the SQL dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// A 16-byte event id (BINARY(16) in MySQL).
    EventId,
    /// Text of at most this many characters.
    Text {
        /// Width in characters.
        max_chars: u32,
    },
    /// A whole number (BIGINT).
    Int,
    /// A whole number that fits in 32 bits (INT): a larger one would be refused by the
    /// database, so it is rejected on receipt instead.
    Int32,
    /// A double-precision floating-point number.
    Float,
    /// A boolean.
    Bool,
    /// A UTC time with microseconds.
    Timestamp,
    /// A JSON document.
    Json,
}

impl ColumnType {
    /// The type of a plan column of this kind.
    pub fn of(kind: Kind) -> Self {
        match kind {
            Kind::String { max_chars, .. } => ColumnType::Text { max_chars },
            Kind::Int => ColumnType::Int,
            Kind::Int32 => ColumnType::Int32,
            Kind::Float => ColumnType::Float,
            Kind::Bool => ColumnType::Bool,
            Kind::Time => ColumnType::Timestamp,
            Kind::Json => ColumnType::Json,
        }
    }
}

/// One column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
}

/// How a table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// One row per event, keyed by `event_id`; a repeated event is a no-op.
    Events,
    /// One row per session, merged from all of the session's events.
    Sessions,
}

/// One table the collector writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Table name.
    pub name: &'static str,
    /// How it is written.
    pub kind: TableKind,
    /// Columns in the order rows hold their values.
    pub columns: Vec<Column>,
    /// What each new row adds to the summaries (the same for every event of the table).
    pub counts: Vec<Count>,
}

impl Table {
    /// The position of column `name` in the table's rows.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

const fn col(name: &'static str, ty: ColumnType) -> Column {
    Column { name, ty }
}

const fn text(name: &'static str, max_chars: u32) -> Column {
    col(name, ColumnType::Text { max_chars })
}

/// Columns every event table starts with, in this order.
pub const EVENT_COLUMNS: [Column; 5] = [
    col("event_id", ColumnType::EventId),
    text("service", catalog::SERVICE_CHARS),
    text("session_id", catalog::SESSION_ID_CHARS),
    text("user_id", catalog::USER_ID_CHARS),
    col("timestamp", ColumnType::Timestamp),
];

/// The columns `usage_events` adds for events the catalogue does not name.
pub const USAGE_EVENT_COLUMNS: [Column; 5] = [
    text("event_name", catalog::EVENT_NAME_CHARS),
    text("trace_id", 32),
    text("span_id", 16),
    col("duration_ms", ColumnType::Int),
    col("attributes", ColumnType::Json),
];

/// Columns of `ide_sessions`, in the order a [`crate::catalog::SessionRow`] is written;
/// the last five are counters the writer adds the session's newly inserted rows to.
pub const SESSION_COLUMNS: [Column; 14] = [
    text("session_id", catalog::SESSION_ID_CHARS),
    text("service", catalog::SERVICE_CHARS),
    text("user_id", catalog::USER_ID_CHARS),
    col("start_time", ColumnType::Timestamp),
    col("last_activity", ColumnType::Timestamp),
    col("end_time", ColumnType::Timestamp),
    col("duration_seconds", ColumnType::Int),
    text("user_agent", catalog::USER_AGENT_CHARS),
    text("ip_address", catalog::CLIENT_ADDRESS_CHARS),
    col("programs_run", ColumnType::Int),
    col("lines_executed", ColumnType::Int),
    col("errors_encountered", ColumnType::Int),
    col("page_visits", ColumnType::Int),
    col("features_used", ColumnType::Int),
];

/// The tables of `plan`: one per table its events name, in the order of their first event,
/// then `usage_events`.
pub fn of_plan(plan: &Plan) -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    for event in &plan.events {
        if event.is_session_event() {
            if !out.iter().any(|t| t.name == tables::IDE_SESSIONS) {
                out.push(Table {
                    name: tables::IDE_SESSIONS,
                    kind: TableKind::Sessions,
                    columns: SESSION_COLUMNS.to_vec(),
                    counts: Vec::new(),
                });
            }
            continue;
        }
        let table = match out.iter_mut().find(|t| t.name == event.table) {
            Some(table) => table,
            None => {
                out.push(Table {
                    name: event.table,
                    kind: TableKind::Events,
                    columns: EVENT_COLUMNS.to_vec(),
                    // The plan checks that every event of a table counts the same way.
                    counts: event.counts.clone(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        for column in &event.columns {
            if !table.columns.iter().any(|c| c.name == column.column) {
                table
                    .columns
                    .push(col(column.column, ColumnType::of(column.kind)));
            }
        }
    }
    let mut usage_events = EVENT_COLUMNS.to_vec();
    usage_events.extend(USAGE_EVENT_COLUMNS);
    out.push(Table {
        name: tables::USAGE_EVENTS,
        kind: TableKind::Events,
        columns: usage_events,
        counts: vec![Count {
            daily: Some("other_events"),
            session: None,
            add: None,
            when_false: None,
        }],
    });
    out
}

/// The built-in tables.
pub fn built_in() -> Vec<Table> {
    of_plan(plan::built_in())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_tables_keep_the_old_column_names() {
        let tables = built_in();
        let names = |table: &str| -> Vec<&str> {
            let t = tables.iter().find(|t| t.name == table).unwrap();
            t.columns.iter().map(|c| c.name).collect()
        };
        assert_eq!(
            names("page_visits")[5..],
            ["page_path", "referrer", "user_agent", "ip_address"]
        );
        assert_eq!(
            names("program_executions")[5..],
            [
                "program_lines",
                "lines_executed",
                "execution_time_ms",
                "success",
                "error_message"
            ]
        );
        assert_eq!(
            names("feature_usage")[5..],
            ["feature_name", "feature_data"]
        );
        assert_eq!(names("ide_sessions").len(), 14);
        assert_eq!(tables.last().unwrap().name, "usage_events");
    }
}
