//! The usage event catalogue: the one definition of every built-in event, its attribute keys and
//! types, and the table and column each attribute lands in.
//!
//! This module is the contract between the apps (which record events with these keys) and the
//! collector (which derives its table mapping, its type checks and its schema verification from
//! the same data). A key is spelled once, here; everything else refers to the constants.
//!
//! Keys follow the OpenTelemetry semantic conventions where one exists (`url.path`,
//! `user_agent.original`, `client.address`, `error.message`, `session.id`, `user.id`).

/// Attribute keys, shared by the tracker's helpers and the collector's mapping.
pub mod keys {
    /// The event's name when the OTLP `event_name` field is not set.
    pub const EVENT_NAME: &str = "event.name";
    /// A client-chosen unique id (the tracker sets a UUIDv7) that makes retries idempotent.
    pub const EVENT_ID: &str = "event.id";
    /// The session an event belongs to; creates or updates its `ide_sessions` row.
    pub const SESSION_ID: &str = "session.id";
    /// The signed-in user, when there is one.
    pub const USER_ID: &str = "user.id";
    /// Resource attribute naming the service that sent the event.
    pub const SERVICE_NAME: &str = "service.name";
    /// Path of a visited page.
    pub const URL_PATH: &str = "url.path";
    /// The `Referer` request header (a string, or a string array as HTTP semconv records it).
    pub const HTTP_REFERER: &str = "http.request.header.referer";
    /// The browser's user agent.
    pub const USER_AGENT: &str = "user_agent.original";
    /// The client's network address.
    pub const CLIENT_ADDRESS: &str = "client.address";
    /// Number of lines in a program that was run.
    pub const PROGRAM_LINES: &str = "program.lines";
    /// Number of lines the interpreter executed.
    pub const PROGRAM_LINES_EXECUTED: &str = "program.lines_executed";
    /// Run time in milliseconds (a span's own duration wins over it).
    pub const PROGRAM_DURATION_MS: &str = "program.duration_ms";
    /// Whether the run succeeded (a span's error status wins over it).
    pub const PROGRAM_SUCCESS: &str = "program.success";
    /// Why a run failed.
    pub const ERROR_MESSAGE: &str = "error.message";
    /// Name of a feature that was used.
    pub const FEATURE_NAME: &str = "feature.name";
    /// Free-form feature details: a JSON string or a key-value list.
    pub const FEATURE_DATA: &str = "feature.data";
}

/// Names of the built-in events.
pub mod events {
    /// A page was shown.
    pub const PAGE_VISIT: &str = "page_visit";
    /// An IDE session began.
    pub const SESSION_START: &str = "session_start";
    /// An IDE session ended.
    pub const SESSION_END: &str = "session_end";
    /// A program was run (as a log event or as a span).
    pub const PROGRAM_EXECUTION: &str = "program_execution";
    /// A feature was used.
    pub const FEATURE_USE: &str = "feature_use";
}

/// Table names the built-in catalogue writes.
pub mod tables {
    /// One row per `page_visit`.
    pub const PAGE_VISITS: &str = "page_visits";
    /// One row per session, upserted by every event that carries `session.id`.
    pub const IDE_SESSIONS: &str = "ide_sessions";
    /// One row per `program_execution`.
    pub const PROGRAM_EXECUTIONS: &str = "program_executions";
    /// One row per `feature_use`.
    pub const FEATURE_USAGE: &str = "feature_usage";
    /// One row per event the catalogue does not name.
    pub const USAGE_EVENTS: &str = "usage_events";
}

/// The type an attribute must have on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    /// A string value.
    Str,
    /// A string, or an array of strings (the first is kept), as HTTP header attributes are.
    StrOrFirstOfArray,
    /// A whole number (an integral double is accepted, as JavaScript SDKs send numbers).
    Int,
    /// A boolean.
    Bool,
    /// A JSON document given as a string, or a key-value list stored as JSON.
    Json,
}

/// Where a span's own data replaces an attribute when the event arrives as a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOverride {
    /// The span's end minus start, in milliseconds.
    DurationMs,
    /// `false` when the span's status is error, `true` when it is ok.
    Success,
    /// The span's status message when its status is error.
    ErrorMessage,
}

/// One attribute of an event and the column it is written to.
#[derive(Debug, Clone, Copy)]
pub struct Attribute {
    /// The attribute key on the wire.
    pub key: &'static str,
    /// Its expected type.
    pub ty: AttrType,
    /// An event without it is rejected.
    pub required: bool,
    /// The column in the event's table.
    pub column: &'static str,
    /// For text columns: the column width in characters; longer values are cut.
    pub max_chars: Option<u32>,
    /// Span data that wins over the attribute, for events recorded as spans.
    pub span_override: Option<SpanOverride>,
}

/// One event of the built-in catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// The event name on the wire.
    pub name: &'static str,
    /// The table it is written to.
    pub table: &'static str,
    /// Its attributes beyond the common ones ([`COMMON`]).
    pub attributes: &'static [Attribute],
}

const fn text(key: &'static str, column: &'static str, max_chars: u32) -> Attribute {
    Attribute {
        key,
        ty: AttrType::Str,
        required: false,
        column,
        max_chars: Some(max_chars),
        span_override: None,
    }
}

const fn typed(key: &'static str, column: &'static str, ty: AttrType) -> Attribute {
    Attribute {
        key,
        ty,
        required: false,
        column,
        max_chars: None,
        span_override: None,
    }
}

const fn required(mut attribute: Attribute) -> Attribute {
    attribute.required = true;
    attribute
}

const fn from_span(mut attribute: Attribute, span: SpanOverride) -> Attribute {
    attribute.span_override = Some(span);
    attribute
}

/// Width of the `session_id` column.
pub const SESSION_ID_CHARS: u32 = 128;
/// Width of the `user_id` column.
pub const USER_ID_CHARS: u32 = 128;
/// Width of the `service` column.
pub const SERVICE_CHARS: u32 = 128;
/// Width of `usage_events.event_name`.
pub const EVENT_NAME_CHARS: u32 = 128;
/// Width of the user agent columns.
pub const USER_AGENT_CHARS: u32 = 512;
/// Width of the client address columns (an IPv6 address with zone fits).
pub const CLIENT_ADDRESS_CHARS: u32 = 64;
/// Width of `program_executions.error_message`.
pub const ERROR_MESSAGE_CHARS: u32 = 2048;

/// Attributes every event may carry, written to every table that has the column.
pub const COMMON: &[Attribute] = &[
    text(keys::SESSION_ID, "session_id", SESSION_ID_CHARS),
    text(keys::USER_ID, "user_id", USER_ID_CHARS),
];

/// The built-in events. Any other event name goes to [`tables::USAGE_EVENTS`].
pub const BUILT_IN: &[Event] = &[
    Event {
        name: events::PAGE_VISIT,
        table: tables::PAGE_VISITS,
        attributes: &[
            required(text(keys::URL_PATH, "page_path", 1024)),
            Attribute {
                ty: AttrType::StrOrFirstOfArray,
                ..text(keys::HTTP_REFERER, "referrer", 1024)
            },
            text(keys::USER_AGENT, "user_agent", USER_AGENT_CHARS),
            text(keys::CLIENT_ADDRESS, "ip_address", CLIENT_ADDRESS_CHARS),
        ],
    },
    Event {
        name: events::SESSION_START,
        table: tables::IDE_SESSIONS,
        attributes: &[
            text(keys::USER_AGENT, "user_agent", USER_AGENT_CHARS),
            text(keys::CLIENT_ADDRESS, "ip_address", CLIENT_ADDRESS_CHARS),
        ],
    },
    Event {
        name: events::SESSION_END,
        table: tables::IDE_SESSIONS,
        attributes: &[],
    },
    Event {
        name: events::PROGRAM_EXECUTION,
        table: tables::PROGRAM_EXECUTIONS,
        attributes: &[
            typed(keys::PROGRAM_LINES, "program_lines", AttrType::Int),
            typed(
                keys::PROGRAM_LINES_EXECUTED,
                "lines_executed",
                AttrType::Int,
            ),
            from_span(
                typed(
                    keys::PROGRAM_DURATION_MS,
                    "execution_time_ms",
                    AttrType::Int,
                ),
                SpanOverride::DurationMs,
            ),
            from_span(
                typed(keys::PROGRAM_SUCCESS, "success", AttrType::Bool),
                SpanOverride::Success,
            ),
            from_span(
                text(keys::ERROR_MESSAGE, "error_message", ERROR_MESSAGE_CHARS),
                SpanOverride::ErrorMessage,
            ),
        ],
    },
    Event {
        name: events::FEATURE_USE,
        table: tables::FEATURE_USAGE,
        attributes: &[
            required(text(keys::FEATURE_NAME, "feature_name", 255)),
            typed(keys::FEATURE_DATA, "feature_data", AttrType::Json),
        ],
    },
];

/// The built-in event with this name, if there is one.
pub fn event(name: &str) -> Option<&'static Event> {
    BUILT_IN.iter().find(|event| event.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_unique_and_found() {
        for (i, event) in BUILT_IN.iter().enumerate() {
            assert!(BUILT_IN[..i].iter().all(|e| e.name != event.name));
            assert_eq!(super::event(event.name).map(|e| e.name), Some(event.name));
        }
        assert!(super::event("no_such_event").is_none());
    }

    /// The collector moves each attribute's value into one column, so no event may read a key
    /// twice (its own list, plus the common attributes every event carries).
    #[test]
    fn each_event_reads_an_attribute_key_once() {
        for event in BUILT_IN {
            let keys: Vec<&str> = COMMON
                .iter()
                .chain(event.attributes)
                .map(|a| a.key)
                .collect();
            for (i, key) in keys.iter().enumerate() {
                assert!(!keys[..i].contains(key), "{}: `{key}` twice", event.name);
            }
        }
    }

    #[test]
    fn text_columns_have_a_width_and_others_do_not() {
        for attribute in BUILT_IN.iter().flat_map(|e| e.attributes).chain(COMMON) {
            let is_text = matches!(attribute.ty, AttrType::Str | AttrType::StrOrFirstOfArray);
            assert_eq!(is_text, attribute.max_chars.is_some(), "{}", attribute.key);
        }
    }
}
