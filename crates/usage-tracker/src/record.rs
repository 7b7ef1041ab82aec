//! Recording usage events: typed helpers for the built-in catalogue, [`event!`](crate::event!)
//! for anything else, and [`ProgramRun`] for a program run recorded as a span.
//!
//! Every helper is one [`event!`](crate::event!): a `tracing` event with target [`TARGET`], the
//! catalogue's event name as its name and the catalogue's keys as its fields, plus a fresh UUIDv7
//! `event.id` so that the collector writes a retried event once. Field values, the id included,
//! are only computed when a subscriber wants the event: with tracking off, a helper costs one
//! disabled-callsite check.
//!
//! A value the collector requires (a page visit's `path`, a feature use's `name`) must not be
//! empty. The tracker refuses such an event rather than let the collector drop or store it
//! without anyone noticing: it is not sent, it counts in [`Stats::invalid`](crate::Stats), and
//! the tracker warns (see [`TrackerBuilder::on_warning`](crate::TrackerBuilder::on_warning)).

use tracing::field::Empty;

use crate::catalog::{events, keys};

/// The `tracing` target of every usage event and usage span; the tracker exports only these.
pub const TARGET: &str = "usage";

/// A UUIDv7, formatted on the stack.
#[derive(Clone, Copy)]
pub struct EventId([u8; 36]);

impl EventId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        let mut buf = [0u8; 36];
        uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        EventId(buf)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // encode_lower writes ASCII hex digits and hyphens only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A page was shown. Start from [`PageVisit::new`] with the path.
#[derive(Debug, Default, Clone, Copy)]
pub struct PageVisit<'a> {
    /// The page's path. Required: a visit with an empty path is refused (see [`page_visit`]).
    pub path: &'a str,
    /// The session it belongs to.
    pub session_id: Option<&'a str>,
    /// The signed-in user.
    pub user_id: Option<&'a str>,
    /// The `Referer` header.
    pub referrer: Option<&'a str>,
    /// The browser's user agent.
    pub user_agent: Option<&'a str>,
    /// The client's address.
    pub client_address: Option<&'a str>,
}

impl<'a> PageVisit<'a> {
    /// A visit of `path`, with the other fields unset; set them with struct update syntax:
    /// `PageVisit { session_id: Some(id), ..PageVisit::new("/ide") }`.
    pub fn new(path: &'a str) -> Self {
        Self {
            path,
            ..Self::default()
        }
    }
}

/// Records a page visit.
///
/// A visit whose `path` is empty (or blank) is not sent: the tracker counts it in
/// [`Stats::invalid`](crate::Stats) and warns, naming the event and the missing key.
pub fn page_visit(visit: PageVisit<'_>) {
    crate::event!(
        events::PAGE_VISIT,
        { keys::SESSION_ID } = visit.session_id,
        { keys::USER_ID } = visit.user_id,
        { keys::URL_PATH } = visit.path,
        { keys::HTTP_REFERER } = visit.referrer,
        { keys::USER_AGENT } = visit.user_agent,
        { keys::CLIENT_ADDRESS } = visit.client_address,
    );
}

/// An IDE session began.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStart<'a> {
    /// The session.
    pub session_id: &'a str,
    /// The signed-in user.
    pub user_id: Option<&'a str>,
    /// The browser's user agent.
    pub user_agent: Option<&'a str>,
    /// The client's address.
    pub client_address: Option<&'a str>,
}

/// Records the start of a session.
pub fn session_start(start: SessionStart<'_>) {
    crate::event!(
        events::SESSION_START,
        { keys::SESSION_ID } = start.session_id,
        { keys::USER_ID } = start.user_id,
        { keys::USER_AGENT } = start.user_agent,
        { keys::CLIENT_ADDRESS } = start.client_address,
    );
}

/// Records the end of a session.
pub fn session_end(session_id: &str) {
    crate::event!(events::SESSION_END, { keys::SESSION_ID } = session_id);
}

/// A program was run (recorded after the fact; see [`ProgramRun`] for a span).
#[derive(Debug, Default, Clone, Copy)]
pub struct ProgramExecution<'a> {
    /// The session.
    pub session_id: Option<&'a str>,
    /// The signed-in user.
    pub user_id: Option<&'a str>,
    /// Lines in the program.
    pub lines: Option<i64>,
    /// Lines the interpreter executed.
    pub lines_executed: Option<i64>,
    /// Run time in milliseconds.
    pub duration_ms: Option<i64>,
    /// `Some(message)` when the run failed.
    pub error_message: Option<&'a str>,
}

/// Records a program run.
pub fn program_execution(run: ProgramExecution<'_>) {
    crate::event!(
        events::PROGRAM_EXECUTION,
        { keys::SESSION_ID } = run.session_id,
        { keys::USER_ID } = run.user_id,
        { keys::PROGRAM_LINES } = run.lines,
        { keys::PROGRAM_LINES_EXECUTED } = run.lines_executed,
        { keys::PROGRAM_DURATION_MS } = run.duration_ms,
        { keys::PROGRAM_SUCCESS } = run.error_message.is_none(),
        { keys::ERROR_MESSAGE } = run.error_message,
    );
}

/// A feature was used. Start from [`FeatureUse::new`] with the feature's name.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeatureUse<'a> {
    /// The feature's name. Required: a use with an empty name is refused (see [`feature_use`]).
    pub name: &'a str,
    /// The session.
    pub session_id: Option<&'a str>,
    /// The signed-in user.
    pub user_id: Option<&'a str>,
    /// Details as a JSON document.
    pub data_json: Option<&'a str>,
}

impl<'a> FeatureUse<'a> {
    /// A use of the feature `name`, with the other fields unset; set them with struct update
    /// syntax: `FeatureUse { session_id: Some(id), ..FeatureUse::new("autosave") }`.
    pub fn new(name: &'a str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }
}

/// Records a feature use.
///
/// A use whose `name` is empty (or blank) is not sent: the tracker counts it in
/// [`Stats::invalid`](crate::Stats) and warns, naming the event and the missing key.
pub fn feature_use(feature: FeatureUse<'_>) {
    crate::event!(
        events::FEATURE_USE,
        { keys::SESSION_ID } = feature.session_id,
        { keys::USER_ID } = feature.user_id,
        { keys::FEATURE_NAME } = feature.name,
        { keys::FEATURE_DATA } = feature.data_json,
    );
}

/// Records a usage event: a `tracing` event with target [`TARGET`](crate::TARGET), level INFO,
/// `name` as its name and a fresh UUIDv7 `event.id` besides the given fields. An event the
/// catalogue does not name is written to `usage_events` with its fields as JSON.
///
/// The name must be a literal or a `const`; fields use `tracing` syntax, including
/// `{ KEY } = value` for a key held in a `const` such as those of [`catalog::keys`](crate::catalog::keys):
///
/// ```
/// use usage_tracker::catalog::keys;
/// usage_tracker::event!("share_link", "session.id" = "s-1", "link.kind" = "public", pages = 3);
/// usage_tracker::event!("share_link", { keys::SESSION_ID } = "s-1", { keys::USER_ID } = Some("u-7"));
/// ```
///
/// As with any `tracing` event, the fields (and the id) are only computed when a subscriber
/// wants the event.
#[macro_export]
macro_rules! event {
    ($name:expr $(, $($fields:tt)*)?) => {
        $crate::tracing::event!(
            name: $name,
            target: $crate::TARGET,
            $crate::tracing::Level::INFO,
            {
                { $crate::catalog::keys::EVENT_ID } = $crate::EventId::new().as_str()
                $(, $($fields)*)?
            }
        )
    };
}

/// A program run recorded as a span: its duration is the span's, and [`ProgramRun::failed`]
/// gives it an error status, which the collector maps to `success = false` and the message.
/// The run ends when the value is dropped (or [`ProgramRun::finish`] is called).
#[derive(Debug)]
pub struct ProgramRun {
    span: tracing::Span,
}

impl ProgramRun {
    /// Starts a run in `session_id`.
    pub fn start(session_id: Option<&str>) -> Self {
        let span = tracing::info_span!(
            target: TARGET,
            events::PROGRAM_EXECUTION,
            { keys::EVENT_ID } = EventId::new().as_str(),
            { keys::SESSION_ID } = session_id,
            { keys::PROGRAM_LINES } = Empty,
            { keys::PROGRAM_LINES_EXECUTED } = Empty,
            otel.status_description = Empty,
        );
        Self { span }
    }

    /// Lines in the program.
    pub fn lines(&self, lines: i64) -> &Self {
        self.span.record(keys::PROGRAM_LINES, lines);
        self
    }

    /// Lines the interpreter executed.
    pub fn lines_executed(&self, lines: i64) -> &Self {
        self.span.record(keys::PROGRAM_LINES_EXECUTED, lines);
        self
    }

    /// Marks the run as failed with this message.
    pub fn failed(&self, message: &str) -> &Self {
        self.span.record("otel.status_description", message);
        self
    }

    /// The span, to enter it or to parent other spans.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Ends the run now.
    pub fn finish(self) {}
}

/// The value of an attribute of an [`Event`] built at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// Text (also a time in RFC 3339, or JSON, where the plan's column says so).
    String(String),
    /// A whole number.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        AttributeValue::String(value.to_owned())
    }
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::String(value)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

impl From<i32> for AttributeValue {
    fn from(value: i32) -> Self {
        AttributeValue::Int(value.into())
    }
}

impl From<u32> for AttributeValue {
    fn from(value: u32) -> Self {
        AttributeValue::Int(value.into())
    }
}

impl From<f64> for AttributeValue {
    fn from(value: f64) -> Self {
        AttributeValue::Float(value)
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        AttributeValue::Bool(value)
    }
}

impl AttributeValue {
    fn describe(&self) -> String {
        match self {
            AttributeValue::String(s) => format!("string {s:?}"),
            AttributeValue::Int(i) => format!("int {i}"),
            AttributeValue::Float(f) => format!("float {f}"),
            AttributeValue::Bool(b) => format!("bool {b}"),
        }
    }
}

/// A usage event whose name and attributes are only known at run time (an event of a site's
/// tracking plan, read from data): recorded with [`Tracker::record`](crate::Tracker::record),
/// which checks it against the tracking plan first. Events known when the code is written are
/// simpler with [`event!`](crate::event!).
///
/// ```
/// let step = usage_tracker::Event::new("debugger_step")
///     .attribute("session.id", "s-1")
///     .attribute("debugger.line", 42)
///     .attribute("code.file.path", "main.bas");
/// assert_eq!(step.name(), "debugger_step");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    name: String,
    attributes: Vec<(String, AttributeValue)>,
}

impl Event {
    /// An event called `name`, with no attributes yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            attributes: Vec::new(),
        }
    }

    /// The event with attribute `key` set to `value` (replacing an earlier value of `key`).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<AttributeValue>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = value,
            None => self.attributes.push((key, value)),
        }
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its attributes, in the order they were set.
    pub fn attributes(&self) -> &[(String, AttributeValue)] {
        &self.attributes
    }

    /// The attribute `key`, if set.
    pub fn get(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value)
    }

    /// Checks the event against `plan` as the collector will: every attribute the plan
    /// requires is there (and not blank), and every attribute it maps has its column's type.
    pub fn check(&self, plan: &crate::catalog::Plan) -> Result<(), RecordError> {
        use crate::catalog::plan::Kind;
        let Some(spec) = plan.event(&self.name) else {
            return Ok(()); // not declared: it goes to usage_events as it is
        };
        for column in &spec.columns {
            let key = column.attribute;
            let value = match self.get(key) {
                Some(AttributeValue::String(s)) if s.trim().is_empty() => None,
                other => other,
            };
            let Some(value) = value else {
                if column.required {
                    return Err(RecordError::Missing {
                        event: spec.name,
                        key,
                    });
                }
                continue;
            };
            let expected = match (column.kind, value) {
                (Kind::String { .. } | Kind::Json | Kind::Time, AttributeValue::String(_))
                | (Kind::Int | Kind::Time, AttributeValue::Int(_))
                | (Kind::Float, AttributeValue::Int(_) | AttributeValue::Float(_))
                | (Kind::Bool, AttributeValue::Bool(_)) => None,
                (Kind::Int32, AttributeValue::Int(i)) if i32::try_from(*i).is_ok() => None,
                (Kind::Int32, _) => Some("an integer within 32 bits"),
                (Kind::Int, _) => Some("an integer"),
                (Kind::Float, _) => Some("a number"),
                (Kind::Bool, _) => Some("a boolean"),
                (Kind::Time, _) => Some("an RFC 3339 string or nanoseconds since the epoch"),
                (Kind::Json, _) => Some("a JSON string"),
                (Kind::String { .. }, _) => Some("a string"),
            };
            if let Some(expected) = expected {
                return Err(RecordError::WrongType {
                    event: spec.name,
                    key,
                    expected,
                    got: value.describe(),
                });
            }
        }
        Ok(())
    }
}

/// Why the tracker did not send an [`Event`]: the collector would refuse it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// A required attribute is absent or blank.
    #[error("event `{event}` needs attribute `{key}`")]
    Missing {
        /// The event.
        event: &'static str,
        /// The attribute.
        key: &'static str,
    },
    /// An attribute has the wrong type for its column.
    #[error("event `{event}`: attribute `{key}` must be {expected}, got {got}")]
    WrongType {
        /// The event.
        event: &'static str,
        /// The attribute.
        key: &'static str,
        /// What its column takes.
        expected: &'static str,
        /// What was given.
        got: String,
    },
}

impl RecordError {
    /// The event and the attribute at fault.
    pub fn event_and_key(&self) -> (&'static str, &'static str) {
        match self {
            RecordError::Missing { event, key } | RecordError::WrongType { event, key, .. } => {
                (event, key)
            }
        }
    }
}
