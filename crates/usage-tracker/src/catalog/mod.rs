//! The usage event catalogue: the contract between the apps (which record events with these
//! keys) and the collector (which derives its tables, type checks, schema verification,
//! migrations and rollups from the same plan).
//!
//! - [`plan`]: the tracking plan — every event, its table, and the attribute, type and column
//!   of each value — read from a TOML file; [`plan::built_in`] is the web IDE's, the default.
//! - [`keys`], [`events`], [`tables`]: the names the typed helpers and the collector's own
//!   rules use. A key is spelled once, here; everything else refers to the constants.
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

pub mod plan;

pub use plan::{Plan, PlanError, built_in};

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
