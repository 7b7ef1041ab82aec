//! The tracking plan: which events exist, the table each is written to, and the attribute,
//! type and column of each of its values, read from a TOML file (format in
//! `docs/tracking-plan.md`).
//!
//! [`Plan::parse`] checks a whole file and names every problem it finds with its event and
//! column, so that a broken file is refused with everything to fix at once and a good one is
//! valid by construction: the collector derives its tables, checks, migrations and rollups
//! from a [`Plan`] without checking it again. [`built_in`] is the plan the collector uses when
//! it is given none (`built_in.toml` beside this file).
//!
//! Names read from a file are interned for the life of the process ([`intern`]): the collector
//! labels metrics and spool records with `&'static str` table and column names, and a plan read
//! again (a reload) only adds the names it has not seen before.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde::Deserialize;

use super::{EVENT_NAME_CHARS, keys, tables};

/// The text of the built-in plan.
pub const BUILT_IN_TOML: &str = include_str!("built_in.toml");

/// The built-in plan (parsed once).
pub fn built_in() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| Plan::parse(BUILT_IN_TOML).expect("the built-in plan is valid"))
}

/// The only format version there is.
pub const VERSION: u32 = 1;

/// The widest text column a plan may declare, in characters (`TEXT` holds 65 535 bytes, four
/// bytes a character in utf8mb4).
pub const MAX_TEXT_CHARS: u32 = 16_383;

/// Tables a plan may not name: the collector's own, and `usage_events`, where every event the
/// plan does not declare goes.
pub const RESERVED_TABLES: [&str; 7] = [
    tables::USAGE_EVENTS,
    "dead_letters",
    "collector_heartbeats",
    "collector_leases",
    "daily_usage_by_service",
    "daily_usage_summary",
    "session_summary",
];

/// Columns every event table starts with; a plan may not declare them.
pub const COMMON_COLUMNS: [&str; 6] = [
    "id",
    "event_id",
    "service",
    "session_id",
    "user_id",
    "timestamp",
];

/// Attributes the collector reads for every event; a plan may not map them to a column.
pub const RESERVED_ATTRIBUTES: [&str; 5] = [
    keys::EVENT_NAME,
    keys::EVENT_ID,
    keys::SESSION_ID,
    keys::USER_ID,
    keys::SERVICE_NAME,
];

/// The columns a session event may fill in `ide_sessions`.
pub const SESSION_COLUMNS: [&str; 2] = ["user_agent", "ip_address"];

/// Counters of the daily rollup (`daily_usage_by_service`) an event's rows may add to.
pub const DAILY_COUNTERS: [&str; 5] = [
    "page_visits",
    "programs_run",
    "program_errors",
    "features_used",
    "other_events",
];

/// Counters of a session's row (`ide_sessions`) an event's rows may add to.
pub const SESSION_COUNTERS: [&str; 5] = [
    "programs_run",
    "lines_executed",
    "errors_encountered",
    "page_visits",
    "features_used",
];

/// Returns a `&'static str` equal to `text`, allocating it only the first time it is seen.
pub fn intern(text: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(name) = names.get(text) {
        return name;
    }
    let name: &'static str = Box::leak(text.to_owned().into_boxed_str());
    names.insert(name);
    name
}

/// What a column holds, and so what its attribute must be on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text of at most `max_chars` characters; longer values are cut to fit.
    String {
        /// The column's width in characters.
        max_chars: u32,
        /// An array of strings is taken too, and its first is kept (as HTTP semantic
        /// conventions record header values).
        first_of_array: bool,
    },
    /// A whole number (an integral double is accepted, as JavaScript SDKs send numbers).
    Int,
    /// A whole number that fits in 32 bits.
    Int32,
    /// A floating-point number (an integer is accepted).
    Float,
    /// A boolean.
    Bool,
    /// A point in time: an RFC 3339 string, or an integer of nanoseconds since the Unix epoch.
    Time,
    /// A JSON document given as a string, or a key-value list or array stored as JSON.
    Json,
}

impl Kind {
    /// The name the file uses for this kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String { .. } => "string",
            Kind::Int => "int",
            Kind::Int32 => "int32",
            Kind::Float => "float",
            Kind::Bool => "bool",
            Kind::Time => "time",
            Kind::Json => "json",
        }
    }
}

/// Span data that wins over an attribute when the event arrives as a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOverride {
    /// The span's end minus start, in milliseconds (an `int` column).
    DurationMs,
    /// `false` when the span's status is error, `true` when it is ok (a `bool` column).
    Success,
    /// The span's status message when its status is error (a `string` column).
    ErrorMessage,
}

/// One column of an event's table and the attribute its value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The column.
    pub column: &'static str,
    /// The attribute key on the wire.
    pub attribute: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// An event without the attribute is refused.
    pub required: bool,
    /// Span data that wins over the attribute.
    pub from_span: Option<SpanOverride>,
    /// For a `bool` column: without the attribute (or span status), true unless this other
    /// column of the event has a value.
    pub true_unless: Option<&'static str>,
}

/// What each new row of an event adds to the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// The daily rollup's counter, one of [`DAILY_COUNTERS`].
    pub daily: Option<&'static str>,
    /// The session's counter, one of [`SESSION_COUNTERS`] (rows with a session only).
    pub session: Option<&'static str>,
    /// Adds this `int` column's value instead of 1.
    pub add: Option<&'static str>,
    /// Counts only rows whose `bool` column is false.
    pub when_false: Option<&'static str>,
}

/// One event of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event name on the wire.
    pub name: &'static str,
    /// The table its rows are written to ([`tables::IDE_SESSIONS`]: no row of its own, only
    /// its session's).
    pub table: &'static str,
    /// What it records, for people reading the plan.
    pub description: String,
    /// Its columns beyond the common ones.
    pub columns: Vec<Column>,
    /// What each of its rows adds to the summaries.
    pub counts: Vec<Count>,
    /// The event ends its session (sets the session's end time).
    pub ends_session: bool,
}

impl Event {
    /// True when the event writes only its session's row.
    pub fn is_session_event(&self) -> bool {
        self.table == tables::IDE_SESSIONS
    }

    /// The column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.column == name)
    }
}

/// A checked tracking plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every event, in the file's order.
    pub events: Vec<Event>,
}

/// A plan file that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanError {
    /// Each problem, naming its event and column.
    pub problems: Vec<String>,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the tracking plan has {} problem", self.problems.len())?;
        if self.problems.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(": ")?;
        f.write_str(&self.problems.join("; "))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default)]
    events: Vec<FileEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvent {
    name: String,
    table: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    columns: Vec<FileColumn>,
    #[serde(default)]
    counts: Vec<FileCount>,
    #[serde(default)]
    ends_session: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileColumn {
    column: String,
    attribute: String,
    #[serde(rename = "type")]
    kind: String,
    max_chars: Option<u32>,
    #[serde(default)]
    first_of_array: bool,
    #[serde(default)]
    required: bool,
    from_span: Option<String>,
    true_unless: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCount {
    daily: Option<String>,
    session: Option<String>,
    add: Option<String>,
    when_false: Option<String>,
}

/// True for a name MySQL and SQLite take unquoted-safe in the collector's statements:
/// lowercase ASCII letters, digits and `_`, starting with a letter or `_`, at most 64 bytes.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl Plan {
    /// Reads and checks a plan file's text.
    pub fn parse(text: &str) -> Result<Plan, PlanError> {
        let file: File = toml::from_str(text).map_err(|e| PlanError {
            problems: vec![e.to_string().trim_end().replace('\n', " ")],
        })?;
        let mut problems = Vec::new();
        if file.version != VERSION {
            problems.push(format!(
                "version {} is not one this collector reads (it reads version {VERSION})",
                file.version
            ));
        }
        let mut events: Vec<Event> = Vec::new();
        for (i, raw) in file.events.iter().enumerate() {
            let before = problems.len();
            let event = check_event(raw, &mut problems);
            if file.events[..i].iter().any(|e| e.name == raw.name) {
                problems.push(format!("event `{}` is declared twice", raw.name));
            }
            if problems.len() == before {
                events.push(event);
            }
        }
        check_shared_tables(&events, &mut problems);
        if problems.is_empty() {
            Ok(Plan { events })
        } else {
            Err(PlanError { problems })
        }
    }

    /// The event called `name`.
    pub fn event(&self, name: &str) -> Option<&Event> {
        self.events.iter().find(|e| e.name == name)
    }

    /// The first attribute `name` requires that `has_value` does not find, if `name` is an
    /// event of the plan.
    pub fn missing_required(
        &self,
        name: &str,
        has_value: impl Fn(&str) -> bool,
    ) -> Option<(&'static str, &'static str)> {
        let event = self.event(name)?;
        event
            .columns
            .iter()
            .find(|c| c.required && !has_value(c.attribute))
            .map(|c| (event.name, c.attribute))
    }
}

fn check_event(raw: &FileEvent, problems: &mut Vec<String>) -> Event {
    let event = raw.name.as_str();
    let mut problem = |text: String| problems.push(format!("event `{event}`: {text}"));
    if event.is_empty() || event.chars().count() > EVENT_NAME_CHARS as usize {
        problem(format!(
            "its name must have 1 to {EVENT_NAME_CHARS} characters"
        ));
    }
    if !is_identifier(&raw.table) {
        problem(format!(
            "table `{}` is not a name the collector writes: use lowercase letters, digits and `_` \
             (at most 64, not starting with a digit)",
            raw.table
        ));
    } else if RESERVED_TABLES.contains(&raw.table.as_str()) {
        problem(format!(
            "table `{}` is the collector's own; choose another name",
            raw.table
        ));
    }
    let session_event = raw.table == tables::IDE_SESSIONS;
    let mut columns: Vec<Column> = Vec::new();
    for (i, column) in raw.columns.iter().enumerate() {
        let earlier = &raw.columns[..i];
        let name = column.column.as_str();
        let before = problems.len();
        let mut problem = |text: String| {
            problems.push(format!("event `{event}`, column `{name}`: {text}"));
        };
        if !is_identifier(name) {
            problem(
                "not a column name the collector writes: use lowercase letters, digits and `_` \
                 (at most 64, not starting with a digit)"
                    .to_owned(),
            );
        } else if COMMON_COLUMNS.contains(&name) {
            problem("every event table has this column already; do not declare it".to_owned());
        } else if session_event && !SESSION_COLUMNS.contains(&name) {
            problem(format!(
                "a session event can fill only {} of `ide_sessions`",
                SESSION_COLUMNS.join(" and ")
            ));
        }
        if earlier.iter().any(|c| c.column == name) {
            problem("declared twice".to_owned());
        }
        if column.attribute.is_empty() {
            problem("its attribute is empty".to_owned());
        } else if RESERVED_ATTRIBUTES.contains(&column.attribute.as_str()) {
            problem(format!(
                "attribute `{}` is read for every event; it cannot fill a column",
                column.attribute
            ));
        } else if earlier.iter().any(|c| c.attribute == column.attribute) {
            problem(format!(
                "attribute `{}` fills another column already",
                column.attribute
            ));
        }
        let kind = match (column.kind.as_str(), column.max_chars) {
            ("string", Some(max_chars)) if (1..=MAX_TEXT_CHARS).contains(&max_chars) => {
                Some(Kind::String {
                    max_chars,
                    first_of_array: column.first_of_array,
                })
            }
            ("string", Some(other)) => {
                problem(format!(
                    "max_chars {other} is outside 1 to {MAX_TEXT_CHARS}"
                ));
                None
            }
            ("string", None) => {
                problem("a string column needs max_chars (its width)".to_owned());
                None
            }
            (_, Some(_)) if column.kind != "string" => {
                problem(format!(
                    "max_chars is for string columns, not {}",
                    column.kind
                ));
                None
            }
            ("int", None) => Some(Kind::Int),
            ("int32", None) => Some(Kind::Int32),
            ("float", None) => Some(Kind::Float),
            ("bool", None) => Some(Kind::Bool),
            ("time", None) => Some(Kind::Time),
            ("json", None) => Some(Kind::Json),
            (other, _) => {
                problem(format!(
                    "type `{other}` is not one of string, int, int32, float, bool, time, json"
                ));
                None
            }
        };
        if column.first_of_array && column.kind != "string" {
            problem("first_of_array is for string columns".to_owned());
        }
        if session_event && !matches!(kind, Some(Kind::String { .. }) | None) {
            problem("a session column holds a string".to_owned());
        }
        let from_span = match column.from_span.as_deref() {
            None => None,
            Some("duration_ms") => Some((SpanOverride::DurationMs, "int")),
            Some("success") => Some((SpanOverride::Success, "bool")),
            Some("error_message") => Some((SpanOverride::ErrorMessage, "string")),
            Some(other) => {
                problem(format!(
                    "from_span `{other}` is not one of duration_ms, success, error_message"
                ));
                None
            }
        };
        if let (Some((_, wanted)), Some(kind)) = (from_span, kind)
            && kind.name() != wanted
        {
            problem(format!(
                "from_span `{}` fills a {wanted} column, not a {} one",
                column.from_span.as_deref().unwrap_or_default(),
                kind.name()
            ));
        }
        if column.true_unless.is_some() && kind != Some(Kind::Bool) {
            problem("true_unless is for bool columns".to_owned());
        }
        if problems.len() == before
            && let Some(kind) = kind
        {
            columns.push(Column {
                column: intern(name),
                attribute: intern(&column.attribute),
                kind,
                required: column.required,
                from_span: from_span.map(|(over, _)| over),
                true_unless: column.true_unless.as_deref().map(intern),
            });
        }
    }
    for column in &columns {
        if let Some(other) = column.true_unless
            && !columns.iter().any(|c| c.column == other)
        {
            problems.push(format!(
                "event `{event}`, column `{}`: true_unless names `{other}`, which is not a \
                 column of this event",
                column.column
            ));
        }
    }
    let mut counts = Vec::new();
    for (n, count) in raw.counts.iter().enumerate() {
        let before = problems.len();
        let mut problem = |text: String| {
            problems.push(format!("event `{event}`, counts[{n}]: {text}"));
        };
        if session_event {
            problem(
                "a session event writes no row to count; sessions are counted by the collector"
                    .to_owned(),
            );
        }
        if count.daily.is_none() && count.session.is_none() {
            problem("name a daily counter, a session counter or both".to_owned());
        }
        if let Some(daily) = &count.daily
            && !DAILY_COUNTERS.contains(&daily.as_str())
        {
            problem(format!(
                "daily counter `{daily}` is not one of {}",
                DAILY_COUNTERS.join(", ")
            ));
        }
        if let Some(session) = &count.session
            && !SESSION_COUNTERS.contains(&session.as_str())
        {
            problem(format!(
                "session counter `{session}` is not one of {}",
                SESSION_COUNTERS.join(", ")
            ));
        }
        let kind_of = |name: &str| columns.iter().find(|c| c.column == name).map(|c| c.kind);
        if let Some(add) = &count.add
            && !matches!(kind_of(add), Some(Kind::Int | Kind::Int32))
        {
            problem(format!(
                "add names `{add}`, which is not an int column of this event"
            ));
        }
        if let Some(column) = &count.when_false
            && kind_of(column) != Some(Kind::Bool)
        {
            problem(format!(
                "when_false names `{column}`, which is not a bool column of this event"
            ));
        }
        if problems.len() == before {
            counts.push(Count {
                daily: count.daily.as_deref().map(intern),
                session: count.session.as_deref().map(intern),
                add: count.add.as_deref().map(intern),
                when_false: count.when_false.as_deref().map(intern),
            });
        }
    }
    Event {
        name: intern(event),
        table: intern(&raw.table),
        description: raw.description.clone(),
        columns,
        counts,
        ends_session: raw.ends_session,
    }
}

/// Events sharing a table share its columns: a column two of them declare has one type, and
/// every row of the table counts the same way (the rows do not say which event they were).
fn check_shared_tables(events: &[Event], problems: &mut Vec<String>) {
    for (i, event) in events.iter().enumerate() {
        if event.is_session_event() {
            continue;
        }
        let Some(first) = events[..i].iter().find(|e| e.table == event.table) else {
            continue;
        };
        for column in &event.columns {
            let same = events[..i]
                .iter()
                .filter(|e| e.table == event.table)
                .flat_map(|e| e.columns.iter().map(move |c| (e.name, c)))
                .find(|(_, c)| c.column == column.column);
            if let Some((other, earlier)) = same
                && earlier.kind != column.kind
            {
                problems.push(format!(
                    "event `{}`, column `{}`: declared as {} in table `{}`, but event `{other}` \
                     declares it as {}",
                    event.name,
                    column.column,
                    describe(column.kind),
                    event.table,
                    describe(earlier.kind)
                ));
            }
        }
        if first.counts != event.counts {
            problems.push(format!(
                "event `{}`: its counts differ from those of event `{}`, which writes the same \
                 table `{}` (a table's rows all count the same way)",
                event.name, first.name, event.table
            ));
        }
    }
}

/// A kind as the file writes it, with its width.
pub fn describe(kind: Kind) -> String {
    match kind {
        Kind::String { max_chars, .. } => format!("string({max_chars})"),
        other => other.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_plan_is_valid_and_keeps_the_old_tables() {
        let plan = built_in();
        let names: Vec<&str> = plan.events.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "page_visit",
                "session_start",
                "session_end",
                "program_execution",
                "feature_use"
            ]
        );
        let visit = plan.event("page_visit").unwrap();
        assert_eq!(visit.table, "page_visits");
        assert!(visit.column("page_path").unwrap().required);
        assert_eq!(
            plan.missing_required("feature_use", |key| key != keys::FEATURE_NAME),
            Some(("feature_use", keys::FEATURE_NAME))
        );
        assert_eq!(plan.missing_required("no_such_event", |_| false), None);
        assert!(plan.event("session_end").unwrap().ends_session);
    }

    #[test]
    fn every_problem_is_named_with_its_event_and_column() {
        let text = r#"
            version = 1
            [[events]]
            name = "debugger_step"
            table = "debugger steps"
            columns = [
                { column = "line", attribute = "debugger.line", type = "integer" },
                { column = "note", attribute = "debugger.note", type = "string" },
                { column = "session_id", attribute = "x", type = "int" },
                { column = "hits", attribute = "debugger.line", type = "int" },
            ]
            counts = [{ daily = "steps" }]
            [[events]]
            name = "debugger_step"
            table = "usage_events"
        "#;
        let error = Plan::parse(text).unwrap_err();
        assert_eq!(
            error.problems,
            [
                "event `debugger_step`: table `debugger steps` is not a name the collector writes: use lowercase letters, digits and `_` (at most 64, not starting with a digit)",
                "event `debugger_step`, column `line`: type `integer` is not one of string, int, int32, float, bool, time, json",
                "event `debugger_step`, column `note`: a string column needs max_chars (its width)",
                "event `debugger_step`, column `session_id`: every event table has this column already; do not declare it",
                "event `debugger_step`, column `hits`: attribute `debugger.line` fills another column already",
                "event `debugger_step`, counts[0]: daily counter `steps` is not one of page_visits, programs_run, program_errors, features_used, other_events",
                "event `debugger_step`: table `usage_events` is the collector's own; choose another name",
                "event `debugger_step` is declared twice",
            ]
        );
        assert!(
            error
                .to_string()
                .starts_with("the tracking plan has 8 problems: ")
        );
    }

    #[test]
    fn syntax_errors_and_unknown_keys_are_refused_with_their_place() {
        let error =
            Plan::parse("version = 1\n[[events]]\nname = \"a\"\ntable = \"t\"\ncolour = 1\n")
                .unwrap_err();
        assert!(
            error.problems[0].contains("unknown field `colour`"),
            "{error}"
        );
        let error = Plan::parse("version = 2").unwrap_err();
        assert_eq!(
            error.problems,
            ["version 2 is not one this collector reads (it reads version 1)"]
        );
    }

    #[test]
    fn events_of_one_table_agree_on_columns_and_counts() {
        let text = r#"
            version = 1
            [[events]]
            name = "a"
            table = "shared"
            columns = [{ column = "n", attribute = "n", type = "int" }]
            [[events]]
            name = "b"
            table = "shared"
            columns = [{ column = "n", attribute = "m", type = "string", max_chars = 8 }]
            counts = [{ daily = "other_events" }]
        "#;
        let error = Plan::parse(text).unwrap_err();
        assert_eq!(
            error.problems,
            [
                "event `b`, column `n`: declared as string(8) in table `shared`, but event `a` declares it as int",
                "event `b`: its counts differ from those of event `a`, which writes the same table `shared` (a table's rows all count the same way)",
            ]
        );
    }

    #[test]
    fn interned_names_are_shared() {
        let a = intern("debugger_steps");
        let b = intern(&String::from("debugger_steps"));
        assert!(std::ptr::eq(a, b));
    }
}
