//! From a decoded event to a row: attribute types checked, text cut to its column's width.
//!
//! What the tracking plan ([`usage_tracker::catalog::plan`]) declares decides almost
//! everything; the rules beyond its data:
//! - an event of a plan table gets the five common columns, then the table's columns (those of
//!   another event of the same table are NULL);
//! - for an event that arrived as a span, the span's duration and status win over the
//!   attributes they override ([`SpanOverride`]);
//! - a `bool` column with `true_unless` and no value is true unless that other column has one;
//! - an event the plan does not declare goes to `usage_events` with its attributes as JSON;
//! - every event with `session.id` updates that session's row (the sink adds the rows it
//!   inserts to the session's counters).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use time::{OffsetDateTime, PrimitiveDateTime};
use usage_tracker::catalog::plan::{self, Kind, Plan, SpanOverride};
use usage_tracker::catalog::{self, keys, tables};

use super::rows::{SessionRow, Value};
use super::settings::{IpAnonymization, NonUsageRecords};
use super::tables::{self as table_defs, Column, ColumnType, Table, TableId};
use crate::event::wire::{KeyValue, Value as V};
use crate::event::{UsageEvent, describe, find};

/// Why an event could not be mapped to a row.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// A required attribute is absent.
    #[error("event `{event}` needs attribute `{key}`")]
    MissingAttribute {
        /// The event name.
        event: &'static str,
        /// The attribute key.
        key: &'static str,
    },
    /// An attribute has the wrong type for its column.
    #[error("attribute `{key}` must be {expected}, got {got}")]
    WrongType {
        /// The attribute key.
        key: &'static str,
        /// The expected type.
        expected: &'static str,
        /// What was sent.
        got: String,
    },
    /// A JSON attribute does not hold JSON.
    #[error("attribute `{key}` is not valid JSON: {error}")]
    BadJson {
        /// The attribute key.
        key: &'static str,
        /// The parser's complaint.
        error: String,
    },
    /// A time attribute does not hold a time the database can store.
    #[error("attribute `{key}` is not a time: {error}")]
    BadTimeValue {
        /// The attribute key.
        key: &'static str,
        /// What is wrong with it.
        error: String,
    },
    /// A whole number does not fit its column.
    #[error("attribute `{key}` is {value}, outside its column's range {min} to {max}")]
    OutOfRange {
        /// The attribute key.
        key: &'static str,
        /// What was sent.
        value: i64,
        /// The column's smallest value.
        min: i64,
        /// The column's largest value.
        max: i64,
    },
    /// A number the database cannot store (NaN or infinite).
    #[error("attribute `{key}` is {value}, which a database column cannot hold")]
    NotFinite {
        /// The attribute key.
        key: &'static str,
        /// What was sent.
        value: f64,
    },
    /// The event is older than its table keeps: it would be deleted at the next sweep.
    #[error("the event is older than the {days} days this collector keeps (retention.days)")]
    PastRetention {
        /// Days kept.
        days: u32,
    },
    /// The event's time cannot be stored (outside years 1000–9999).
    #[error("event time {unix_nano} ns since the epoch is outside the years 1000 to 9999")]
    TimeOutOfRange {
        /// The time sent.
        unix_nano: u64,
    },
}

impl MapError {
    /// Every reason label.
    pub const REASONS: [&'static str; 5] = [
        "missing_attribute",
        "wrong_type",
        "bad_time",
        "out_of_range",
        "past_retention",
    ];

    /// Low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            MapError::MissingAttribute { .. } => "missing_attribute",
            MapError::WrongType { .. }
            | MapError::BadJson { .. }
            | MapError::BadTimeValue { .. } => "wrong_type",
            MapError::TimeOutOfRange { .. } => "bad_time",
            MapError::OutOfRange { .. } | MapError::NotFinite { .. } => "out_of_range",
            MapError::PastRetention { .. } => "past_retention",
        }
    }
}

/// One event, ready for a [`super::RowBatch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The event's id.
    pub id: [u8; 16],
    /// The event's row, unless it only updates its session.
    pub row: Option<(TableId, Vec<Value>)>,
    /// The session it touches.
    pub session: Option<(String, SessionRow)>,
    /// (table, column) of each text value that was cut to fit.
    pub truncated: Vec<(&'static str, &'static str)>,
}

/// A declared event, found by name: its plan entry and its table.
#[derive(Debug, Clone, Copy)]
struct Declared {
    /// Position in the plan's events.
    event: usize,
    /// Its table (`None`: a session event, which writes only its session's row).
    table: Option<TableId>,
}

/// The tables and the event-to-table mapping.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Which catalogue this is, among those the process made (see [`Catalog::generation`]).
    generation: u64,
    plan: Arc<Plan>,
    tables: Vec<Table>,
    usage_events: TableId,
    /// Declared events by name.
    declared: HashMap<&'static str, Declared>,
    /// What is kept of client addresses (before anything reaches the spool).
    ip: IpAnonymization,
    /// What becomes of records that are not usage events.
    non_usage: NonUsageRecords,
    /// (table, days) kept: an event already older than its table keeps is rejected, not
    /// written to be deleted.
    retention: Vec<(&'static str, u32)>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::built_in()
    }
}

impl Catalog {
    /// The built-in catalogue.
    pub fn built_in() -> Self {
        Self::of_plan(Arc::new(plan::built_in().clone()))
    }

    /// The catalogue of a tracking plan.
    pub fn of_plan(plan: Arc<Plan>) -> Self {
        let tables = table_defs::of_plan(&plan);
        let declared = plan
            .events
            .iter()
            .enumerate()
            .map(|(event, spec)| {
                let table = if spec.is_session_event() {
                    None
                } else {
                    tables.iter().position(|t| t.name == spec.table)
                };
                (spec.name, Declared { event, table })
            })
            .collect();
        static GENERATIONS: AtomicU64 = AtomicU64::new(1);
        Self {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            usage_events: tables
                .iter()
                .position(|t| t.name == tables::USAGE_EVENTS)
                .expect("every catalogue has usage_events"),
            tables,
            declared,
            plan,
            ip: IpAnonymization::default(),
            non_usage: NonUsageRecords::default(),
            retention: Vec::new(),
        }
    }

    /// A number no other catalogue of this process has (a copy keeps it: its tables are the
    /// same), so rows mapped by it are known to fit its tables.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The plan this catalogue was made from.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// True when the plan declares an event called `name`.
    pub fn declares(&self, name: &str) -> bool {
        self.declared.contains_key(name)
    }

    /// What becomes of records that are not usage events.
    pub fn non_usage(&self) -> NonUsageRecords {
        self.non_usage
    }

    /// This catalogue, treating records that are not usage events as `non_usage` says.
    pub fn with_non_usage(mut self, non_usage: NonUsageRecords) -> Self {
        self.non_usage = non_usage;
        self
    }

    /// This catalogue, rejecting events older than `days(table)` days (0: any age).
    pub fn with_retention(mut self, days: impl Fn(&str) -> u32) -> Self {
        let mut retention: Vec<(&'static str, u32)> =
            self.tables.iter().map(|t| (t.name, days(t.name))).collect();
        if !retention.iter().any(|(t, _)| *t == tables::IDE_SESSIONS) {
            retention.push((tables::IDE_SESSIONS, days(tables::IDE_SESSIONS)));
        }
        retention.retain(|(_, days)| *days > 0);
        self.retention = retention;
        self
    }

    /// Refuses an event for `table` older than the table keeps.
    fn check_retention(&self, table: &str, unix_nano: u64) -> Result<(), MapError> {
        let Some((_, days)) = self.retention.iter().find(|(t, _)| *t == table) else {
            return Ok(());
        };
        let now = crate::event::now_unix_nano();
        let limit = u64::from(*days) * 86_400 * 1_000_000_000;
        if now.saturating_sub(unix_nano) > limit {
            return Err(MapError::PastRetention { days: *days });
        }
        Ok(())
    }

    /// This catalogue, keeping client addresses as `ip` says.
    pub fn with_ip_anonymization(mut self, ip: IpAnonymization) -> Self {
        self.ip = ip;
        self
    }

    /// A catalogue of other tables (a collector version with a different catalogue); every
    /// list must hold `usage_events`.
    #[cfg(test)]
    pub(crate) fn with_tables(tables: Vec<Table>) -> Self {
        // A catalogue of its own: its tables differ from the built-in one's.
        let mut catalog = Self::of_plan(Arc::new(plan::built_in().clone()));
        catalog.usage_events = tables
            .iter()
            .position(|t| t.name == tables::USAGE_EVENTS)
            .expect("usage_events");
        for declared in catalog.declared.values_mut() {
            let spec = &catalog.plan.events[declared.event];
            declared.table = if spec.is_session_event() {
                None
            } else {
                tables.iter().position(|t| t.name == spec.table)
            };
        }
        catalog.tables = tables;
        catalog
    }

    /// Every table the catalogue writes.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Maps one event with the attributes of the record it was read from, copying only the
    /// values the row keeps.
    pub fn map(
        &self,
        event: &UsageEvent<'_>,
        attributes: &[KeyValue<'_>],
    ) -> Result<Mapped, MapError> {
        let mut truncated = Vec::new();
        let time = timestamp(event.time_unix_nano)?;
        let declared = self.declared.get(event.name.as_ref()).copied();
        let spec = declared.map(|d| &self.plan.events[d.event]);
        let table_id = match declared {
            Some(declared) => declared.table,
            None => Some(self.usage_events),
        };
        let table_name = table_id.map_or(tables::IDE_SESSIONS, |id| self.tables[id].name);
        self.check_retention(table_name, event.time_unix_nano)?;
        // Cut once here so the event row and the session row agree on the session's id.
        let mut common = |key: &'static str, column: &'static str, width: u32| {
            let mut value = text_attr(attributes, key)?;
            if let Some(text) = value.as_mut()
                && cut(text, width)
            {
                truncated.push((table_name, column));
            }
            Ok::<_, MapError>(value)
        };
        let mut session_id = common(keys::SESSION_ID, "session_id", catalog::SESSION_ID_CHARS)?;
        let user_id = common(keys::USER_ID, "user_id", catalog::USER_ID_CHARS)?;
        // Trailing spaces are not part of a session's id: MySQL compares strings without them,
        // so `s1 ` and `s1` are one session there, and so they are everywhere.
        if let Some(id) = session_id.as_mut() {
            id.truncate(id.trim_end_matches(' ').len());
        }
        let row = match (table_id, spec) {
            (Some(id), spec) => {
                let table = &self.tables[id];
                let mut values = Vec::with_capacity(table.columns.len());
                values.push(Value::Id(*event.id.as_bytes()));
                values.push(Value::Text(event.service.to_string()));
                values.push(session_id.clone().map_or(Value::Null, Value::Text));
                values.push(user_id.clone().map_or(Value::Null, Value::Text));
                values.push(Value::Time(time));
                match spec {
                    Some(spec) => fill_declared(event, attributes, spec, table, &mut values)?,
                    None => fill_usage_event(event, attributes, self.ip, &mut values),
                }
                self.anonymize(table, &mut values);
                cut_to_fit(table, &mut values, &mut truncated);
                Some((id, values))
            }
            (None, _) => None,
        };
        // A session event's own columns go to its session's row.
        let (mut user_agent, mut ip_address) = (None, None);
        if let Some(spec) = spec.filter(|s| s.is_session_event()) {
            for column in &spec.columns {
                let value = match attribute_value(event, attributes, column, spec.name)? {
                    Value::Text(text) if !text.is_empty() => Some(text),
                    _ => None,
                };
                match column.column {
                    "user_agent" => user_agent = value,
                    "ip_address" => ip_address = value,
                    // The plan allows no other column for a session event.
                    _ => {}
                }
            }
        }
        let session = session_id.map(|id| {
            let mut session = SessionRow {
                service: event.service.to_string(),
                user_id,
                start_time: time,
                last_activity: time,
                end_time: spec.is_some_and(|s| s.ends_session).then_some(time),
                user_agent,
                ip_address,
            };
            session.ip_address = session.ip_address.take().and_then(|a| self.ip.apply(a));
            cut_session(&mut session, &mut truncated);
            (id, session)
        });
        Ok(Mapped {
            id: *event.id.as_bytes(),
            row,
            session,
            truncated,
        })
    }

    /// Applies the client-address setting to the row's `ip_address` column.
    fn anonymize(&self, table: &Table, values: &mut [Value]) {
        if self.ip == IpAnonymization::Off {
            return;
        }
        for (column, value) in table.columns.iter().zip(values) {
            if column.name == IP_ADDRESS_COLUMN
                && let Value::Text(address) = std::mem::replace(value, Value::Null)
            {
                *value = self.ip.apply(address).map_or(Value::Null, Value::Text);
            }
        }
    }
}

/// The declared event's columns of `table`, in the table's order (a column only another event
/// of the table declares is NULL).
fn fill_declared(
    event: &UsageEvent<'_>,
    attributes: &[KeyValue<'_>],
    spec: &plan::Event,
    table: &Table,
    values: &mut Vec<Value>,
) -> Result<(), MapError> {
    let first = values.len();
    for column in &table.columns[table_defs::EVENT_COLUMNS.len()..] {
        values.push(match spec.column(column.name) {
            Some(declared) => attribute_value(event, attributes, declared, spec.name)?,
            None => Value::Null,
        });
    }
    // `true_unless`: a flag without a value is true unless its other column has one.
    for declared in &spec.columns {
        let Some(other) = declared.true_unless else {
            continue;
        };
        let at = |name: &str| table.position(name).filter(|at| *at >= first);
        if let (Some(flag), Some(other)) = (at(declared.column), at(other))
            && values[flag] == Value::Null
        {
            values[flag] = Value::Bool(values[other] == Value::Null);
        }
    }
    Ok(())
}

fn timestamp(unix_nano: u64) -> Result<PrimitiveDateTime, MapError> {
    let micros = i128::from(unix_nano / 1_000 * 1_000);
    OffsetDateTime::from_unix_timestamp_nanos(micros)
        .ok()
        .filter(|t| (1000..=9999).contains(&t.year()))
        .map(|t| PrimitiveDateTime::new(t.date(), t.time()))
        .ok_or(MapError::TimeOutOfRange { unix_nano })
}

fn text_attr(attributes: &[KeyValue<'_>], key: &'static str) -> Result<Option<String>, MapError> {
    match find(attributes, key) {
        None => Ok(None),
        Some(V::Str(s)) => Ok(Some((*s).to_owned())),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

fn wrong_type(key: &'static str, expected: &'static str, got: &V<'_>) -> MapError {
    MapError::WrongType {
        key,
        expected,
        got: describe(got),
    }
}

/// A time attribute: an RFC 3339 string or an integer of nanoseconds since the Unix epoch,
/// within the years the database stores.
fn time_value(key: &'static str, value: &V<'_>) -> Result<PrimitiveDateTime, MapError> {
    let at = match value {
        V::Str(text) => OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| MapError::BadTimeValue {
                key,
                error: format!("{text:?} is not an RFC 3339 time ({e})"),
            })?
            .to_offset(time::UtcOffset::UTC),
        V::Int(nanos) => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(*nanos)).map_err(|e| {
                MapError::BadTimeValue {
                    key,
                    error: format!("{nanos} ns since the epoch: {e}"),
                }
            })?
        }
        other => {
            return Err(wrong_type(
                key,
                "an RFC 3339 string or nanoseconds since the epoch",
                other,
            ));
        }
    };
    if !(1000..=9999).contains(&at.year()) {
        return Err(MapError::BadTimeValue {
            key,
            error: format!("year {} is outside 1000 to 9999", at.year()),
        });
    }
    // Microseconds, as the column keeps.
    let at = at
        .replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .expect("fewer nanoseconds than before");
    Ok(PrimitiveDateTime::new(at.date(), at.time()))
}

/// The attribute's value for its column.
fn attribute_value(
    event: &UsageEvent<'_>,
    attributes: &[KeyValue<'_>],
    column: &plan::Column,
    event_name: &'static str,
) -> Result<Value, MapError> {
    if let (Some(facts), Some(over)) = (&event.span, column.from_span) {
        match over {
            SpanOverride::DurationMs => return Ok(Value::Int(facts.duration_ms)),
            SpanOverride::Success if facts.status_set => {
                return Ok(Value::Bool(facts.error.is_none()));
            }
            SpanOverride::ErrorMessage if facts.error.is_some() => {
                return Ok(facts.error.clone().map_or(Value::Null, Value::Text));
            }
            _ => {}
        }
    }
    let Some(value) = find(attributes, column.attribute) else {
        return if column.required {
            Err(MapError::MissingAttribute {
                event: event_name,
                key: column.attribute,
            })
        } else {
            Ok(Value::Null)
        };
    };
    let key = column.attribute;
    Ok(match (column.kind, value) {
        (Kind::String { .. }, V::Str(s)) => Value::Text((*s).to_owned()),
        (
            Kind::String {
                first_of_array: true,
                ..
            },
            V::Array(values),
        ) => match values.first() {
            None | Some(V::Empty) => Value::Null,
            Some(V::Str(s)) => Value::Text((*s).to_owned()),
            Some(other) => return Err(wrong_type(key, "a string or string array", other)),
        },
        (
            Kind::String {
                first_of_array: true,
                ..
            },
            other,
        ) => {
            return Err(wrong_type(key, "a string or string array", other));
        }
        (Kind::String { .. }, other) => return Err(wrong_type(key, "a string", other)),
        (Kind::Int | Kind::Int32, V::Int(i)) => Value::Int(*i),
        (Kind::Int | Kind::Int32, V::Double(d))
            if d.fract() == 0.0 && d.abs() < 9_007_199_254_740_992.0 =>
        {
            Value::Int(*d as i64)
        }
        (Kind::Int | Kind::Int32, other) => return Err(wrong_type(key, "an integer", other)),
        (Kind::Float, V::Double(d)) if d.is_finite() => Value::Float(*d),
        (Kind::Float, V::Double(d)) => return Err(MapError::NotFinite { key, value: *d }),
        (Kind::Float, V::Int(i)) => Value::Float(*i as f64),
        (Kind::Float, other) => return Err(wrong_type(key, "a number", other)),
        (Kind::Bool, V::Bool(b)) => Value::Bool(*b),
        (Kind::Bool, other) => return Err(wrong_type(key, "a boolean", other)),
        (Kind::Time, value) => Value::Time(time_value(key, value)?),
        (Kind::Json, V::Str(s)) => {
            serde_json::from_str::<serde::de::IgnoredAny>(s).map_err(|e| MapError::BadJson {
                key,
                error: e.to_string(),
            })?;
            let depth = json_depth(s);
            if depth > MAX_JSON_DEPTH {
                return Err(MapError::BadJson {
                    key,
                    error: format!(
                        "nested {depth} levels deep; the database takes at most {MAX_JSON_DEPTH}"
                    ),
                });
            }
            Value::Json((*s).to_owned())
        }
        (Kind::Json, nested @ (V::KvList(_) | V::Array(_))) => {
            Value::Json(to_json(nested).to_string())
        }
        (Kind::Json, other) => {
            return Err(wrong_type(key, "a JSON string or key-value list", other));
        }
    })
    .and_then(|value| match (column.kind, &value) {
        (Kind::Int32, Value::Int(int)) if i32::try_from(*int).is_err() => {
            Err(MapError::OutOfRange {
                key,
                value: *int,
                min: i32::MIN.into(),
                max: i32::MAX.into(),
            })
        }
        _ => Ok(value),
    })
}
/// The column client addresses are stored in (`page_visits`, `ide_sessions`).
const IP_ADDRESS_COLUMN: &str = "ip_address";

/// The deepest JSON the databases take: MariaDB's `JSON_VALID` refuses documents nested 32 levels
/// or more (MySQL's limit, 100, is looser).
pub const MAX_JSON_DEPTH: usize = 31;

/// How deeply arrays and objects nest in a JSON text (0 for a scalar).
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// `usage_events`: name, trace and span id, duration, and every other attribute as JSON.
fn fill_usage_event(
    event: &UsageEvent<'_>,
    attributes: &[KeyValue<'_>],
    ip: IpAnonymization,
    values: &mut Vec<Value>,
) {
    const OWN_COLUMNS: [&str; 4] = [
        keys::EVENT_NAME,
        keys::EVENT_ID,
        keys::SESSION_ID,
        keys::USER_ID,
    ];
    values.push(Value::Text(event.name.to_string()));
    values.push(
        event
            .trace_id
            .map_or(Value::Null, |id| Value::Text(hex(&id))),
    );
    values.push(
        event
            .span_id
            .map_or(Value::Null, |id| Value::Text(hex(&id))),
    );
    values.push(
        event
            .span
            .as_ref()
            .map_or(Value::Null, |s| Value::Int(s.duration_ms)),
    );
    let attributes: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .filter(|kv| !OWN_COLUMNS.contains(&kv.key))
        .map(|kv| {
            let value = kv.value.as_ref().map_or(serde_json::Value::Null, to_json);
            // A client address is kept as the privacy setting says, here as in its columns.
            let value = match value {
                serde_json::Value::String(address) if kv.key == keys::CLIENT_ADDRESS => ip
                    .apply(address)
                    .map_or(serde_json::Value::Null, serde_json::Value::String),
                other => other,
            };
            (kv.key.to_owned(), value)
        })
        .collect();
    values.push(Value::Json(
        serde_json::Value::Object(attributes).to_string(),
    ));
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// An OTLP value as JSON: lists become arrays, key-value lists objects, bytes hex strings.
pub fn to_json(value: &V<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        V::Str(s) => J::String((*s).to_owned()),
        V::Bool(b) => J::Bool(*b),
        V::Int(i) => J::from(*i),
        V::Double(d) => serde_json::Number::from_f64(*d).map_or(J::Null, J::Number),
        V::Array(values) => J::Array(values.iter().map(to_json).collect()),
        V::KvList(values) => J::Object(
            values
                .iter()
                .map(|kv| {
                    (
                        kv.key.to_owned(),
                        kv.value.as_ref().map_or(J::Null, to_json),
                    )
                })
                .collect(),
        ),
        V::Bytes(b) => J::String(hex(b)),
        V::StrIndex(_) | V::Empty => J::Null,
    }
}

/// Cuts `text` to at most `max_chars` characters (always at a UTF-8 boundary).
pub fn cut(text: &mut String, max_chars: u32) -> bool {
    if text.len() <= max_chars as usize {
        return false; // never more characters than bytes: no need to count them
    }
    match text.char_indices().nth(max_chars as usize) {
        Some((byte, _)) => {
            text.truncate(byte);
            true
        }
        None => false,
    }
}

fn cut_to_fit(
    table: &Table,
    values: &mut [Value],
    truncated: &mut Vec<(&'static str, &'static str)>,
) {
    for (column, value) in table.columns.iter().zip(values) {
        if let (
            Column {
                ty: ColumnType::Text { max_chars },
                name,
            },
            Value::Text(text),
        ) = (column, value)
            && cut(text, *max_chars)
        {
            truncated.push((table.name, name));
        }
    }
}

fn cut_session(session: &mut SessionRow, truncated: &mut Vec<(&'static str, &'static str)>) {
    let fields = [
        ("service", Some(&mut session.service)),
        ("user_id", session.user_id.as_mut()),
        ("user_agent", session.user_agent.as_mut()),
        ("ip_address", session.ip_address.as_mut()),
    ];
    for (name, value) in fields {
        let Some(value) = value else { continue };
        let width = table_defs::SESSION_COLUMNS
            .iter()
            .find_map(|c| match c.ty {
                ColumnType::Text { max_chars } if c.name == name => Some(max_chars),
                _ => None,
            })
            .expect("session text column");
        if cut(value, width) {
            truncated.push((tables::IDE_SESSIONS, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::Signal;

    /// An event and the attributes of its record.
    #[derive(Clone)]
    struct Event<'a> {
        event: UsageEvent<'static>,
        attributes: Vec<KeyValue<'a>>,
    }

    impl Event<'_> {
        fn map(&self, catalog: &Catalog) -> Result<Mapped, MapError> {
            catalog.map(&self.event, &self.attributes)
        }
    }

    fn event<'a>(name: &'static str, attributes: Vec<KeyValue<'a>>) -> Event<'a> {
        Event {
            event: UsageEvent {
                id: uuid::Uuid::nil(),
                name: name.into(),
                time_unix_nano: 1_700_000_000_123_456_789,
                service: Arc::from("ide"),
                signal: Signal::Log,
                trace_id: None,
                span_id: None,
                span: None,
                sent_as_event: true,
            },
            attributes,
        }
    }

    fn attr<'a>(key: &'a str, value: V<'a>) -> KeyValue<'a> {
        KeyValue {
            key,
            value: Some(value),
            key_strindex: 0,
        }
    }

    fn string_attr<'a>(key: &'a str, value: &'a str) -> KeyValue<'a> {
        attr(key, V::Str(value))
    }

    #[test]
    fn values_the_database_would_refuse_are_rejected_on_receipt() {
        let catalog = Catalog::built_in();
        let huge = event(
            "program_execution",
            vec![attr(keys::PROGRAM_LINES, V::Int(1 << 40))],
        );
        let error = huge.map(&catalog).unwrap_err();
        assert_eq!(error.reason(), "out_of_range");
        assert!(error.to_string().contains("program.lines"), "{error}");
        let deep = format!("{}1{}", "[".repeat(32), "]".repeat(32));
        let feature = event(
            "feature_use",
            vec![
                string_attr(keys::FEATURE_NAME, "export"),
                string_attr(keys::FEATURE_DATA, &deep),
            ],
        );
        let error = feature.map(&catalog).unwrap_err();
        assert!(error.to_string().contains("nested 32 levels"), "{error}");
        assert_eq!(json_depth(r#"{"a":"[[[[","b":[1,{"c":2}]}"#), 3);
        assert_eq!(json_depth("1"), 0);
    }

    #[test]
    fn events_older_than_their_table_keeps_are_rejected() {
        let catalog =
            Catalog::built_in().with_retention(|table| if table == "page_visits" { 30 } else { 0 });
        let visit = |time_unix_nano| {
            let mut visit = event("page_visit", vec![string_attr(keys::URL_PATH, "/")]);
            visit.event.time_unix_nano = time_unix_nano;
            visit
        };
        let old = crate::event::now_unix_nano() - 31 * 86_400 * 1_000_000_000;
        let error = visit(old).map(&catalog).unwrap_err();
        assert_eq!(error.reason(), "past_retention");
        assert!(visit(crate::event::now_unix_nano()).map(&catalog).is_ok());
        let mut feature = event("feature_use", vec![string_attr(keys::FEATURE_NAME, "x")]);
        feature.event.time_unix_nano = old;
        assert!(feature.map(&catalog).is_ok(), "kept forever");
    }

    #[test]
    fn cut_keeps_whole_characters() {
        let mut text = "añb€".to_owned();
        assert!(cut(&mut text, 3));
        assert_eq!(text, "añb");
        assert!(!cut(&mut text, 3));
    }

    #[test]
    fn integral_doubles_are_integers_and_other_types_are_named() {
        let catalog = Catalog::built_in();
        let ok = event(
            "program_execution",
            vec![attr(keys::PROGRAM_LINES, V::Double(12.0))],
        );
        let (table, row) = ok.map(&catalog).unwrap().row.unwrap();
        let table = &catalog.tables()[table];
        assert_eq!(table.name, "program_executions");
        // The row holds its values in the order of the table's columns.
        let column = |name: &str| {
            let at = table
                .columns
                .iter()
                .position(|c| c.name == name)
                .unwrap_or_else(|| panic!("no column `{name}` in {}", table.name));
            &row[at]
        };
        assert_eq!(column("program_lines"), &Value::Int(12));
        assert_eq!(
            column("success"),
            &Value::Bool(true),
            "no error message: success inferred"
        );
        assert_eq!(
            column("timestamp"),
            &Value::Time(timestamp(1_700_000_000_123_456_000).unwrap())
        );

        let bad = event(
            "program_execution",
            vec![attr(keys::PROGRAM_LINES, V::Double(1.5))],
        );
        assert_eq!(
            bad.map(&catalog).unwrap_err().to_string(),
            "attribute `program.lines` must be an integer, got double 1.5"
        );
        let missing = event("feature_use", vec![string_attr(keys::SESSION_ID, "s")]);
        assert_eq!(
            missing.map(&catalog).unwrap_err(),
            MapError::MissingAttribute {
                event: "feature_use",
                key: keys::FEATURE_NAME
            }
        );
    }

    #[test]
    fn session_events_touch_only_their_session() {
        let catalog = Catalog::built_in();
        let start = event(
            "session_start",
            vec![
                string_attr(keys::SESSION_ID, "s"),
                string_attr(keys::CLIENT_ADDRESS, "10.1.2.3"),
            ],
        );
        let mapped = start.map(&catalog).unwrap();
        assert!(mapped.row.is_none());
        let (id, session) = mapped.session.unwrap();
        assert_eq!(id, "s");
        assert_eq!(session.ip_address.as_deref(), Some("10.1.2.3"));
        assert_eq!(session.end_time, None);
    }
}
