//! Typed row values and the batch one transaction writes.

use std::collections::BTreeMap;

use time::PrimitiveDateTime;

use super::tables::TableId;

/// One column value, already checked against the column's type and width.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 16-byte event id.
    Id([u8; 16]),
    /// Text that fits its column.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A finite floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTC time with microseconds.
    Time(PrimitiveDateTime),
    /// A JSON document.
    Json(String),
}

/// One session's merged facts from the events of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The service of the first event seen.
    pub service: String,
    /// The user, if any event named one.
    pub user_id: Option<String>,
    /// Earliest event time.
    pub start_time: PrimitiveDateTime,
    /// Latest event time.
    pub last_activity: PrimitiveDateTime,
    /// Time of the latest `session_end`.
    pub end_time: Option<PrimitiveDateTime>,
    /// From `session_start` (or any event carrying it).
    pub user_agent: Option<String>,
    /// From `session_start` (or any event carrying it).
    pub ip_address: Option<String>,
}

impl SessionRow {
    /// Folds another event's facts into this session's.
    pub fn merge(&mut self, other: &SessionRow) {
        self.start_time = self.start_time.min(other.start_time);
        self.last_activity = self.last_activity.max(other.last_activity);
        self.end_time = self.end_time.max(other.end_time);
        for (mine, theirs) in [
            (&mut self.user_id, &other.user_id),
            (&mut self.user_agent, &other.user_agent),
            (&mut self.ip_address, &other.ip_address),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
    }
}

/// Everything one transaction writes: event rows per table, and session upserts. It borrows
/// the rows of the mapped events it was built from (the writer keeps those to isolate a bad
/// one), so building a batch copies no row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowBatch<'a> {
    /// Rows per table, indexed by [`TableId`]; each row's values follow the table's columns.
    pub rows: Vec<Vec<&'a [Value]>>,
    /// Sessions touched, by (service, session id): a session belongs to the service that
    /// wrote it (sorted, so concurrent writers lock them in the same order).
    pub sessions: BTreeMap<(&'a str, &'a str), SessionRow>,
    /// Events in the batch.
    pub events: usize,
}

impl<'a> RowBatch<'a> {
    /// An empty batch for a catalogue of `tables` tables.
    pub fn new(tables: usize) -> Self {
        Self {
            rows: vec![Vec::new(); tables],
            ..Self::default()
        }
    }

    /// Adds one mapped event.
    pub fn push(&mut self, mapped: &'a super::Mapped) {
        self.events += 1;
        if let Some((table, row)) = &mapped.row {
            self.rows[*table].push(row);
        }
        if let Some((id, session)) = &mapped.session {
            match self
                .sessions
                .get_mut(&(session.service.as_str(), id.as_str()))
            {
                Some(existing) => existing.merge(session),
                None => {
                    self.sessions
                        .insert((session.service.as_str(), id.as_str()), session.clone());
                }
            }
        }
    }

    /// A batch of these events.
    pub fn of(tables: usize, events: &'a [super::Mapped]) -> Self {
        let mut batch = Self::new(tables);
        for event in events {
            batch.push(event);
        }
        batch
    }

    /// Number of event rows (sessions not counted).
    pub fn row_count(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Which table's rows the batch is, by table, for the rows that are.
    pub fn tables(&self) -> impl Iterator<Item = (TableId, &[&'a [Value]])> {
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(id, rows)| (id, rows.as_slice()))
    }
}
