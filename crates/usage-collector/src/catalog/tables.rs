//! The tables the collector writes, derived from the shared catalogue.
//!
//! Every event table starts with the same five columns ([`EVENT_COLUMNS`]); the catalogue adds
//! each event's own. `ide_sessions` is the one aggregate table: one row per session, upserted.

use usage_tracker::catalog::{self, AttrType, tables};

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
    /// A boolean.
    Bool,
    /// A UTC time with microseconds.
    Timestamp,
    /// A JSON document.
    Json,
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

/// Columns the schema declares as 32-bit `INT` (every other whole number is a `BIGINT`).
const INT32_COLUMNS: [&str; 1] = ["program_lines"];

fn attribute_column(attribute: &catalog::Attribute) -> Column {
    let ty = match (attribute.ty, attribute.max_chars) {
        (AttrType::Str | AttrType::StrOrFirstOfArray, Some(max_chars)) => {
            ColumnType::Text { max_chars }
        }
        (AttrType::Str | AttrType::StrOrFirstOfArray, None) => ColumnType::Json,
        (AttrType::Int, _) if INT32_COLUMNS.contains(&attribute.column) => ColumnType::Int32,
        (AttrType::Int, _) => ColumnType::Int,
        (AttrType::Bool, _) => ColumnType::Bool,
        (AttrType::Json, _) => ColumnType::Json,
    };
    col(attribute.column, ty)
}

/// The built-in tables: one per catalogue table, then `usage_events`.
pub fn built_in() -> Vec<Table> {
    let mut out: Vec<Table> = Vec::new();
    for event in catalog::BUILT_IN {
        if event.table == tables::IDE_SESSIONS {
            if !out.iter().any(|t| t.name == tables::IDE_SESSIONS) {
                out.push(Table {
                    name: tables::IDE_SESSIONS,
                    kind: TableKind::Sessions,
                    columns: SESSION_COLUMNS.to_vec(),
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
                });
                out.last_mut().expect("just pushed")
            }
        };
        for attribute in event.attributes {
            if !table.columns.iter().any(|c| c.name == attribute.column) {
                table.columns.push(attribute_column(attribute));
            }
        }
    }
    let mut usage_events = EVENT_COLUMNS.to_vec();
    usage_events.extend(USAGE_EVENT_COLUMNS);
    out.push(Table {
        name: tables::USAGE_EVENTS,
        kind: TableKind::Events,
        columns: usage_events,
    });
    out
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
