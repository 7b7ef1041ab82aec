//! One usage event, decoded from an OTLP log record or span.
//!
//! Decoding settles the parts every event has — name, id, time, service, and for spans the
//! duration and status — by the contract in DESIGN.md. What the attributes must contain is the
//! catalogue's business ([`crate::catalog`]); a [`UsageEvent`] only promises that it has a name,
//! a stable id and a time.
//!
//! Records are read as borrowed views of the request's bytes ([`wire`]): an event borrows its
//! name from them, and its attributes stay there for the catalogue to read.

pub mod wire;

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
#[cfg(test)]
use opentelemetry_proto::tonic::logs::v1::LogRecord;
#[cfg(test)]
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use sha1::{Digest, Sha1};
use usage_tracker::catalog::keys;
use uuid::Uuid;

use wire::{Scope, Value};

/// Namespace of the name-based (v5) UUIDs the collector derives for an `event.id` that is not a
/// UUID, and of the hashes below the time in derived ids. Changing it would change every
/// derived id: never do.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_52a3_1c2e_4b8e_9d0a_7e55_3c8f_2a10);

/// Instrumentation scope of everything a usage collector sends about itself (its own spans and
/// metrics); records of this scope are refused, so a collector pointed at a usage collector by
/// mistake cannot turn its own telemetry into usage rows.
pub const SELF_SCOPE: &str = "usage-collector.self";

/// Now, in nanoseconds since the Unix epoch (the receive time of a request).
pub fn now_unix_nano() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The service name OpenTelemetry SDKs use when the app did not set one.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Which OTLP signal an event arrived as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A log record.
    Log,
    /// A span.
    Span,
}

impl Signal {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Log => "logs",
            Signal::Span => "traces",
        }
    }
}

/// What a span says beyond its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanFacts {
    /// End minus start, in milliseconds, rounded.
    pub duration_ms: i64,
    /// `Some(message)` when the span's status is error, `None` when unset or ok.
    pub error: Option<String>,
    /// The span's status was explicitly set (ok or error).
    pub status_set: bool,
}

/// A usage event: named, identified and timed. Its attributes stay in the record it was read
/// from ([`wire::LogRecord::attributes`], [`wire::Span::attributes`]), which the catalogue
/// maps with it.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent<'a> {
    /// Stable across client retries: from `event.id`, else the span's ids, else a hash.
    pub id: Uuid,
    /// The event's name, which selects its table (borrowed from the record).
    pub name: Cow<'a, str>,
    /// When it happened, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// The resource's `service.name`.
    pub service: Arc<str>,
    /// Which signal carried it.
    pub signal: Signal,
    /// The trace it belongs to, if any.
    pub trace_id: Option<[u8; 16]>,
    /// Its span (or the span it was recorded in), if any.
    pub span_id: Option<[u8; 8]>,
    /// Duration and status, for events that arrived as spans.
    pub span: Option<SpanFacts>,
    /// The record says it is a usage event: its name came from `event_name` or `event.name`,
    /// or it is under a usage-tracker's scope ([`USAGE_SCOPES`]). A span that is none of
    /// these is a usage event only if the tracking plan declares its name (see
    /// [`crate::catalog::convert`]).
    pub sent_as_event: bool,
}

/// The instrumentation scopes of usage-tracker's records: `usage` (its events, from the
/// `tracing` target of that name, and its spans) and `usage-tracker` (the spans of trackers
/// before 0.2). A record under one of them is a usage event by that alone.
pub const USAGE_SCOPES: [&str; 2] = ["usage", "usage-tracker"];

/// Why a record could not become an event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A record under a usage-tracker's scope with neither `event_name` nor an `event.name`
    /// attribute (nor, for a span, a span name).
    #[error("no event name: set the log record's event_name or an `event.name` string attribute")]
    NoName,
    /// A record that is not a usage event: an app's own log record or span, with no event name,
    /// not declared by the tracking plan and not under a usage-tracker's scope.
    #[error(
        "{what} is not a usage event ({why}); it was not stored: send usage events with an \
         event name (the `event.name` attribute) or under the `usage` scope, or declare the \
         name in the tracking plan (docs/usage-events.md)"
    )]
    NotUsage {
        /// The record, named (`span "GET /ide"`, `a log record`).
        what: String,
        /// What it lacks.
        why: &'static str,
    },
    /// `event.name` or `event.id` is present but not a non-empty string.
    #[error("attribute `{key}` must be a non-empty string, got {got}")]
    BadIdentity {
        /// The attribute.
        key: &'static str,
        /// A short description of what was sent.
        got: String,
    },
    /// The record is the collector's own telemetry sent back to a collector.
    #[error(
        "this is a usage collector's own telemetry (scope `{scope}`), not a usage event: point \
         the collector's telemetry endpoint at a tracing or metrics backend"
    )]
    OwnTelemetry {
        /// The instrumentation scope.
        scope: String,
    },
    /// The span's end is before its start.
    #[error("span ends before it starts (start {start}, end {end})")]
    NegativeDuration {
        /// Start, ns since the epoch.
        start: u64,
        /// End, ns since the epoch.
        end: u64,
    },
}

impl DecodeError {
    /// Every reason label.
    pub const REASONS: [&'static str; 5] = [
        "no_event_name",
        "wrong_type",
        "bad_span",
        "own_telemetry",
        "not_a_usage_event",
    ];

    /// Low-cardinality reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NoName => "no_event_name",
            DecodeError::NotUsage { .. } => "not_a_usage_event",
            DecodeError::BadIdentity { .. } => "wrong_type",
            DecodeError::NegativeDuration { .. } => "bad_span",
            DecodeError::OwnTelemetry { .. } => "own_telemetry",
        }
    }
}

/// The service named by a resource's attributes, without trailing spaces (MySQL compares
/// strings without them, so `web-ide ` and `web-ide` are one service there, and so they are
/// everywhere: in keys, derived ids and token checks).
pub fn service_name(resource_attributes: &[wire::KeyValue<'_>]) -> Arc<str> {
    match find(resource_attributes, keys::SERVICE_NAME)
        .and_then(as_str)
        .map(|name| name.trim_end_matches(' '))
    {
        Some(name) if !name.is_empty() => Arc::from(name),
        _ => Arc::from(UNKNOWN_SERVICE),
    }
}

/// Finds the value of the first attribute named `key` (`None` when that attribute has no
/// value, or an empty one).
pub fn find<'v, 'a>(attributes: &'v [wire::KeyValue<'a>], key: &str) -> Option<&'v Value<'a>> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .filter(|value| **value != Value::Empty)
}

/// The value as a string slice, if it is a string.
pub fn as_str<'a>(value: &Value<'a>) -> Option<&'a str> {
    match value {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

/// A short description of a value's type and content, for error messages.
pub fn describe(value: &Value<'_>) -> String {
    match value {
        Value::Str(s) if s.chars().count() > 40 => {
            format!("string {:?}…", s.chars().take(40).collect::<String>())
        }
        Value::Str(s) => format!("string {s:?}"),
        Value::Bool(b) => format!("bool {b}"),
        Value::Int(i) => format!("int {i}"),
        Value::Double(d) => format!("double {d}"),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::KvList(l) => format!("key-value list of {}", l.len()),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::StrIndex(_) => "string table reference".to_owned(),
        Value::Empty => "no value".to_owned(),
    }
}

fn identity_attr<'a>(
    attributes: &[wire::KeyValue<'a>],
    key: &'static str,
) -> Result<Option<&'a str>, DecodeError> {
    match find(attributes, key) {
        None => Ok(None),
        Some(Value::Str(s)) if !s.is_empty() => Ok(Some(s)),
        Some(other) => Err(DecodeError::BadIdentity {
            key,
            got: describe(other),
        }),
    }
}

/// The name-based (v5) UUID of what `sha1` has read after the namespace: what
/// `Uuid::new_v5(&EVENT_ID_NAMESPACE, name)` gives, without first copying the name into one
/// buffer (and with the processor's SHA instructions where it has them).
fn name_based(sha1: Sha1) -> Uuid {
    let digest = sha1.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

fn id_from_attribute(event_id: &str) -> Uuid {
    Uuid::parse_str(event_id)
        .unwrap_or_else(|_| Uuid::new_v5(&EVENT_ID_NAMESPACE, event_id.as_bytes()))
}

/// A derived id that sorts by time: a UUID version 8 holding the record's time in milliseconds
/// since the Unix epoch in its high 48 bits, the millisecond's fraction in the 12 bits after the
/// version, and 62 bits of `hash` below the variant. The same record always gets the same id
/// (the time is the record's own, never the receive time), and ids of records written in time
/// order append to the unique index's right edge instead of landing on random pages.
pub fn time_ordered_id(time_unix_nano: u64, hash: &Uuid) -> Uuid {
    let ms = time_unix_nano / 1_000_000;
    // Below 4096: (n % 10^6) * 4096 / 10^6.
    let fraction = ((time_unix_nano % 1_000_000) * 4096 / 1_000_000) as u16;
    let mut bytes = [0_u8; 16];
    // A u64 of nanoseconds is at most 1.9e13 ms, which fits 48 bits.
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x80 | (fraction >> 8) as u8;
    bytes[7] = fraction as u8;
    bytes[8..].copy_from_slice(&hash.as_bytes()[8..]);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    Uuid::from_bytes(bytes)
}

fn trace_id(bytes: &[u8]) -> Option<[u8; 16]> {
    <[u8; 16]>::try_from(bytes).ok().filter(|id| id != &[0; 16])
}

fn span_id(bytes: &[u8]) -> Option<[u8; 8]> {
    <[u8; 8]>::try_from(bytes).ok().filter(|id| id != &[0; 8])
}

/// Where a record came from, for the deterministic id of records without `event.id`.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The instrumentation scope.
    scope: Option<Scope<'a>>,
    /// The service, from the resource.
    service: Arc<str>,
    /// Receive time, used when the record carries no time at all.
    now_unix_nano: u64,
    /// A digest of the service, the resource and the scope, computed once for all their
    /// records, so that deriving an id costs the record's bytes, not the resource's again for
    /// every record. The service is in it even when the resource does not name it (a token
    /// may bind the service): one service's derived ids never collide with another's.
    digest: [u8; 16],
}

/// What a resource adds to the digest of its records' origin ([`Origin`]): hashed once per
/// resource, however many scope groups follow it (a request of one large resource and a
/// million empty scope groups costs the resource's bytes once, not a million times).
#[derive(Clone)]
pub struct ResourceDigest(Sha1);

impl std::fmt::Debug for ResourceDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourceDigest")
    }
}

impl ResourceDigest {
    /// The digest of `service` and the resource's attributes.
    pub fn new(resource: &[wire::KeyValue<'_>], service: &Arc<str>) -> Self {
        let mut sha1 = Sha1::new();
        sha1.update(EVENT_ID_NAMESPACE.as_bytes());
        sha1.update(service.as_bytes());
        sha1.update([0]);
        // Prost's encoding of each attribute, whatever encoding the client sent: ids stay
        // those the collector derived when it decoded requests with prost.
        let mut bytes = Vec::with_capacity(256);
        for kv in resource {
            bytes.clear();
            wire::to_prost(kv)
                .encode(&mut bytes)
                .expect("a Vec grows as needed");
            sha1.update(&bytes);
        }
        ResourceDigest(sha1)
    }
}

impl<'a> Origin<'a> {
    /// The origin of the records of one resource (its digest) and scope.
    pub fn new(
        resource: &ResourceDigest,
        scope: Option<Scope<'a>>,
        service: &Arc<str>,
        now_unix_nano: u64,
    ) -> Self {
        let mut sha1 = resource.0.clone();
        if let Some(scope) = scope {
            sha1.update(scope.name.as_bytes());
            sha1.update([0]);
            sha1.update(scope.version.as_bytes());
            sha1.update([0]);
        }
        // `Uuid::new_v5(&EVENT_ID_NAMESPACE, service ‖ 0 ‖ resource ‖ scope)`, streamed.
        Origin {
            scope,
            service: service.clone(),
            now_unix_nano,
            digest: *name_based(sha1).as_bytes(),
        }
    }

    /// True when the records are under a usage-tracker's scope.
    pub fn is_usage_scope(&self) -> bool {
        self.scope.is_some_and(|s| USAGE_SCOPES.contains(&s.name))
    }

    /// Refuses the collector's own telemetry, so a misdirected export cannot loop.
    fn check_not_own(&self) -> Result<(), DecodeError> {
        match self.scope {
            Some(scope) if scope.name == SELF_SCOPE => Err(DecodeError::OwnTelemetry {
                scope: scope.name.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// The record's time (0 when it has none: the receive time would differ on a retry) above
    /// a hash of the origin's digest and the record's bytes as received: the same record from
    /// the same origin always gets the same id, and ids sort by time ([`time_ordered_id`]).
    /// Fields this collector does not know still tell two records apart, and a canonical
    /// encoder's bytes (every OTLP SDK's, and what OTLP/JSON is turned into) are prost's
    /// encoding of the record.
    fn hashed_id(&self, received: &[u8], time_unix_nano: u64) -> Uuid {
        let mut sha1 = Sha1::new();
        sha1.update(EVENT_ID_NAMESPACE.as_bytes());
        sha1.update(self.digest);
        sha1.update(received);
        time_ordered_id(time_unix_nano, &name_based(sha1))
    }
}

impl<'a> UsageEvent<'a> {
    /// Decodes a log record read from a request.
    pub fn of_log(record: &wire::LogRecord<'a>, origin: &Origin<'_>) -> Result<Self, DecodeError> {
        origin.check_not_own()?;
        let attr_name = identity_attr(&record.attributes, keys::EVENT_NAME)?;
        let name = match (record.event_name, attr_name) {
            ("", Some(name)) => name,
            ("", None) if origin.is_usage_scope() => return Err(DecodeError::NoName),
            ("", None) => {
                return Err(DecodeError::NotUsage {
                    what: "the log record".to_owned(),
                    why: "it has no event name and is not under the `usage` scope",
                });
            }
            (name, _) => name,
        };
        let record_time = [record.time_unix_nano, record.observed_time_unix_nano]
            .into_iter()
            .find(|t| *t != 0);
        let id = match identity_attr(&record.attributes, keys::EVENT_ID)? {
            Some(event_id) => id_from_attribute(event_id),
            None => origin.hashed_id(record.bytes, record_time.unwrap_or(0)),
        };
        let time_unix_nano = record_time.unwrap_or(origin.now_unix_nano);
        Ok(UsageEvent {
            id,
            name: Cow::Borrowed(name),
            time_unix_nano,
            service: origin.service.clone(),
            signal: Signal::Log,
            trace_id: trace_id(record.trace_id),
            span_id: span_id(record.span_id),
            span: None,
            sent_as_event: true,
        })
    }

    /// Decodes a span read from a request: its start is the event's time, end − start its
    /// duration.
    pub fn of_span(span: &wire::Span<'a>, origin: &Origin<'_>) -> Result<Self, DecodeError> {
        origin.check_not_own()?;
        let (name, sent_as_event) = match identity_attr(&span.attributes, keys::EVENT_NAME)? {
            Some(name) => (name, true),
            None if !span.name.is_empty() => (span.name, origin.is_usage_scope()),
            None if origin.is_usage_scope() => return Err(DecodeError::NoName),
            None => {
                return Err(DecodeError::NotUsage {
                    what: "the span".to_owned(),
                    why: "it has no name and is not under the `usage` scope",
                });
            }
        };
        if span.end_time_unix_nano < span.start_time_unix_nano {
            return Err(DecodeError::NegativeDuration {
                start: span.start_time_unix_nano,
                end: span.end_time_unix_nano,
            });
        }
        let (trace, own_span) = (trace_id(span.trace_id), span_id(span.span_id));
        let id = match identity_attr(&span.attributes, keys::EVENT_ID)? {
            Some(event_id) => id_from_attribute(event_id),
            None => match (trace, own_span) {
                (Some(t), Some(s)) => {
                    // The service too: span ids travel in `traceparent` headers, so another
                    // service may know them.
                    let mut key = Vec::with_capacity(24 + origin.service.len());
                    key.extend_from_slice(&t);
                    key.extend_from_slice(&s);
                    key.extend_from_slice(origin.service.as_bytes());
                    time_ordered_id(
                        span.start_time_unix_nano,
                        &Uuid::new_v5(&EVENT_ID_NAMESPACE, &key),
                    )
                }
                _ => origin.hashed_id(span.bytes, span.start_time_unix_nano),
            },
        };
        let duration_ns = span.end_time_unix_nano - span.start_time_unix_nano;
        let (error, status_set) = match &span.status {
            Some(status) if status.code == StatusCode::Error as i32 => {
                let message = if status.message.is_empty() {
                    "span status is error".to_owned()
                } else {
                    status.message.to_owned()
                };
                (Some(message), true)
            }
            Some(status) => (None, status.code == StatusCode::Ok as i32),
            None => (None, false),
        };
        let time_unix_nano = if span.start_time_unix_nano != 0 {
            span.start_time_unix_nano
        } else {
            origin.now_unix_nano
        };
        Ok(UsageEvent {
            id,
            name: Cow::Borrowed(name),
            time_unix_nano,
            service: origin.service.clone(),
            signal: Signal::Span,
            trace_id: trace,
            span_id: own_span,
            span: Some(SpanFacts {
                duration_ms: i64::try_from(duration_ns.saturating_add(500_000) / 1_000_000)
                    .unwrap_or(i64::MAX),
                error,
                status_set,
            }),
            sent_as_event,
        })
    }

    /// The event, owning its name.
    pub fn into_owned(self) -> UsageEvent<'static> {
        UsageEvent {
            name: Cow::Owned(self.name.into_owned()),
            ..self
        }
    }
}

/// For this module's tests: the receive path and the writer decode requests, not records.
#[cfg(test)]
impl UsageEvent<'static> {
    /// Decodes a log record built in memory, through prost's
    /// encoding of it and [`UsageEvent::of_log`]; `received` stands for its bytes as they
    /// arrived, when they differ from that encoding.
    pub fn from_log(
        record: LogRecord,
        received: Option<&[u8]>,
        origin: &Origin<'_>,
    ) -> Result<Self, DecodeError> {
        let encoded = record.encode_to_vec();
        let mut view = wire::LogRecord::default();
        wire::Record::decode(&mut view, &encoded, wire::RECURSION_LIMIT)
            .expect("prost's encoding of a record nested as deep as prost decodes");
        view.bytes = received.unwrap_or(&encoded);
        UsageEvent::of_log(&view, origin).map(UsageEvent::into_owned)
    }

    /// Decodes a span built in memory, as [`UsageEvent::from_log`] does a log record.
    pub fn from_span(
        span: Span,
        received: Option<&[u8]>,
        origin: &Origin<'_>,
    ) -> Result<Self, DecodeError> {
        let encoded = span.encode_to_vec();
        let mut view = wire::Span::default();
        wire::Record::decode(&mut view, &encoded, wire::RECURSION_LIMIT)
            .expect("prost's encoding of a span nested as deep as prost decodes");
        view.bytes = received.unwrap_or(&encoded);
        UsageEvent::of_span(&view, origin).map(UsageEvent::into_owned)
    }
}

/// Builds a string attribute (for tests, benches and fixtures).
pub fn string_attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Status;

    fn origin(service: &Arc<str>) -> Origin<'_> {
        Origin::new(&ResourceDigest::new(&[], service), None, service, 7)
    }

    /// The digest of a resource and scope, hashed as a stream once per resource, is the name-based
    /// UUID of their concatenation that derived ids have always used.
    #[test]
    fn the_origin_digest_is_the_hash_of_service_resource_and_scope() {
        let service: Arc<str> = Arc::from("ide");
        let resource = [
            wire::KeyValue {
                key: "service.name",
                value: Some(wire::Value::Str("ide")),
                key_strindex: 0,
            },
            wire::KeyValue {
                key: "nested",
                value: Some(wire::Value::Array(vec![
                    wire::Value::Int(7),
                    wire::Value::Empty,
                    wire::Value::Double(0.5),
                ])),
                key_strindex: 3,
            },
            wire::KeyValue {
                key: "unset",
                value: None,
                key_strindex: 0,
            },
        ];
        let scope = Scope {
            name: "web",
            version: "1.2",
        };
        let mut concatenated = b"ide\0".to_vec();
        for kv in &resource {
            wire::to_prost(kv).encode(&mut concatenated).unwrap();
        }
        concatenated.extend_from_slice(b"web\x001.2\0");
        let digest = ResourceDigest::new(&resource, &service);
        // Every scope of the resource starts from the same resource digest.
        for _ in 0..2 {
            let origin = Origin::new(&digest, Some(scope), &service, 7);
            assert_eq!(
                origin.digest,
                *Uuid::new_v5(&EVENT_ID_NAMESPACE, &concatenated).as_bytes()
            );
        }
        let without_scope = Origin::new(&digest, None, &service, 7);
        let resource_only = concatenated.len() - b"web\x001.2\0".len();
        assert_eq!(
            without_scope.digest,
            *Uuid::new_v5(&EVENT_ID_NAMESPACE, &concatenated[..resource_only]).as_bytes()
        );
    }

    #[test]
    fn log_name_from_field_then_attribute() {
        let service = Arc::from("ide");
        let mut record = LogRecord {
            event_name: "page_visit".into(),
            attributes: vec![string_attr(keys::EVENT_NAME, "other")],
            time_unix_nano: 5,
            ..Default::default()
        };
        let event = UsageEvent::from_log(record.clone(), None, &origin(&service)).unwrap();
        assert_eq!(event.name, "page_visit");
        assert_eq!(event.time_unix_nano, 5);
        record.event_name.clear();
        assert_eq!(
            UsageEvent::from_log(record.clone(), None, &origin(&service))
                .unwrap()
                .name,
            "other"
        );
        record.attributes.clear();
        // A log record with no name is an app's own log, not a usage event, unless it is
        // under the usage-tracker's scope: then it is a usage event that lacks its name.
        let error = UsageEvent::from_log(record.clone(), None, &origin(&service)).unwrap_err();
        assert_eq!(error.reason(), "not_a_usage_event");
        assert!(
            error
                .to_string()
                .starts_with("the log record is not a usage event"),
            "{error}"
        );
        let usage = wire::Scope {
            name: "usage",
            version: "",
        };
        let under_usage = Origin::new(
            &ResourceDigest::new(&[], &service),
            Some(usage),
            &service,
            7,
        );
        assert_eq!(
            UsageEvent::from_log(record, None, &under_usage).unwrap_err(),
            DecodeError::NoName
        );
    }

    #[test]
    fn ids_are_stable_and_follow_the_contract() {
        let service = Arc::from("ide");
        let uuid = "01890a5d-ac96-774b-bcce-b302099a8057";
        let record = LogRecord {
            event_name: "x".into(),
            attributes: vec![string_attr(keys::EVENT_ID, uuid)],
            ..Default::default()
        };
        let event = UsageEvent::from_log(record, None, &origin(&service)).unwrap();
        assert_eq!(event.id.to_string(), uuid);
        assert_eq!(event.time_unix_nano, 7, "falls back to receive time");

        let plain = LogRecord {
            event_name: "x".into(),
            time_unix_nano: 1,
            ..Default::default()
        };
        let a = UsageEvent::from_log(plain.clone(), None, &origin(&service))
            .unwrap()
            .id;
        let b = UsageEvent::from_log(plain.clone(), None, &origin(&service))
            .unwrap()
            .id;
        assert_eq!(a, b, "a retried record keeps its id");
        let other = LogRecord {
            time_unix_nano: 2,
            ..plain
        };
        assert_ne!(
            a,
            UsageEvent::from_log(other, None, &origin(&service))
                .unwrap()
                .id
        );
    }

    fn derived(service: &str, time_unix_nano: u64, body: &str) -> Uuid {
        let service = Arc::from(service);
        let record = LogRecord {
            event_name: "page_visit".into(),
            time_unix_nano,
            attributes: vec![string_attr("url.path", body)],
            ..Default::default()
        };
        UsageEvent::from_log(record, None, &origin(&service))
            .unwrap()
            .id
    }

    #[test]
    fn derived_ids_are_deterministic_per_service_and_sort_by_time() {
        let t = 1_764_504_000_123_456_789; // 2025-11-30T12:00:00.123456789Z
        let id = derived("ide", t, "/a");
        assert_eq!(id, derived("ide", t, "/a"), "the same record, the same id");
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(id, derived("shop", t, "/a"), "another service, another id");
        assert_ne!(id, derived("ide", t, "/b"), "another record, another id");
        // Time in the high bits: milliseconds, then the millisecond's fraction.
        assert_eq!(
            u64::from_be_bytes([
                0,
                0,
                id.as_bytes()[0],
                id.as_bytes()[1],
                id.as_bytes()[2],
                id.as_bytes()[3],
                id.as_bytes()[4],
                id.as_bytes()[5]
            ]),
            t / 1_000_000
        );
        let mut ids: Vec<(u64, Uuid)> = (0..200_u64)
            .map(|n| {
                // Times out of order and as close as 300 µs apart; different bodies so the
                // hash bits differ in every order.
                let time = t + ((n * 7919) % 200) * 300_000;
                (time, derived("ide", time, &format!("/{n}")))
            })
            .collect();
        ids.sort_by_key(|(_, id)| *id);
        assert!(
            ids.windows(2).all(|w| w[0].0 < w[1].0),
            "ids sort by their records' times"
        );
        // A record without any time still gets a stable id (never the receive time).
        let timeless = LogRecord {
            event_name: "x".into(),
            ..Default::default()
        };
        let service = Arc::from("ide");
        let a = UsageEvent::from_log(
            timeless.clone(),
            None,
            &Origin::new(&ResourceDigest::new(&[], &service), None, &service, 1),
        );
        let b = UsageEvent::from_log(
            timeless,
            None,
            &Origin::new(&ResourceDigest::new(&[], &service), None, &service, 2),
        );
        assert_eq!(a.unwrap().id, b.unwrap().id);
    }

    #[test]
    fn span_ids_without_event_id_include_the_service_and_sort_by_start() {
        let span = |start: u64| Span {
            name: "program_execution".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: start + 5,
            ..Default::default()
        };
        let (ide, shop) = (Arc::from("ide"), Arc::from("shop"));
        let id = |s: Span, service: &Arc<str>| {
            UsageEvent::from_span(s, None, &origin(service)).unwrap().id
        };
        let early = id(span(1_764_504_000_000_000_000), &ide);
        assert_eq!(early, id(span(1_764_504_000_000_000_000), &ide));
        assert_ne!(early, id(span(1_764_504_000_000_000_000), &shop));
        assert!(early < id(span(1_764_504_000_001_000_000), &ide));
    }

    /// Stored ids are compared with the ids of records sent again: any change to how an id is
    /// derived (the encoding hashed, the hash, the namespace, the layout) makes a retried
    /// record a second row. These values are pinned; a change here is a breaking change that
    /// needs an upgrade note.
    #[test]
    fn derived_ids_are_pinned() {
        let (ide, shop) = (Arc::from("ide"), Arc::from("shop"));
        let log = LogRecord {
            event_name: "page_visit".into(),
            time_unix_nano: 1_764_504_000_123_456_789,
            attributes: vec![
                string_attr("url.path", "/a"),
                string_attr("session.id", "s-1"),
            ],
            ..Default::default()
        };
        let log_id = |service: &Arc<str>| {
            UsageEvent::from_log(log.clone(), None, &origin(service))
                .unwrap()
                .id
                .to_string()
        };
        let (ide_log, shop_log) = (log_id(&ide), log_id(&shop));
        let span = Span {
            name: "program_execution".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 1_764_504_000_000_000_000,
            end_time_unix_nano: 1_764_504_000_000_000_005,
            ..Default::default()
        };
        let span_id = UsageEvent::from_span(span, None, &origin(&ide)).unwrap().id;
        // An `event.id` that is not a UUID becomes a name-based one.
        let named = LogRecord {
            event_name: "page_visit".into(),
            time_unix_nano: 1_764_504_000_123_456_789,
            attributes: vec![string_attr(keys::EVENT_ID, "order-42")],
            ..Default::default()
        };
        let named_id = UsageEvent::from_log(named, None, &origin(&ide)).unwrap().id;
        assert_eq!(
            [ide_log, shop_log, span_id.to_string(), named_id.to_string()],
            [
                "019ad4a2-567b-874f-8db6-28246971fa80",
                "019ad4a2-567b-874f-8a9c-1a2d49d2d2a8",
                "019ad4a2-5600-8000-a134-ab5d6ceca854",
                "12912c4c-6c49-500d-ad65-9292ccd04b30",
            ]
        );
    }

    /// The bytes a record arrived as give the id its encoding gives (for a canonical encoder),
    /// while a field this collector does not know still tells two records apart.
    #[test]
    fn received_bytes_give_the_same_id_and_unknown_fields_count() {
        let service = Arc::from("ide");
        let log = LogRecord {
            event_name: "page_visit".into(),
            time_unix_nano: 1_764_504_000_123_456_789,
            attributes: vec![string_attr("url.path", "/a")],
            ..Default::default()
        };
        let bytes = log.encode_to_vec();
        let id = |received: Option<&[u8]>| {
            UsageEvent::from_log(log.clone(), received, &origin(&service))
                .unwrap()
                .id
        };
        assert_eq!(id(Some(&bytes)), id(None));
        // Field 99, a string: unknown to this collector's protocol version.
        let mut newer = bytes.clone();
        newer.extend_from_slice(&[0x9a, 0x06, 0x01, b'x']);
        let decoded = LogRecord::decode(newer.as_slice()).unwrap();
        assert_eq!(decoded, log, "the unknown field is dropped when decoded");
        assert_ne!(id(Some(&newer)), id(Some(&bytes)));
        let span = Span {
            name: "program_execution".into(),
            start_time_unix_nano: 1_764_504_000_000_000_000,
            end_time_unix_nano: 1_764_504_000_000_000_005,
            ..Default::default()
        };
        let span_bytes = span.encode_to_vec();
        let span_id = |received: Option<&[u8]>| {
            UsageEvent::from_span(span.clone(), received, &origin(&service))
                .unwrap()
                .id
        };
        assert_eq!(span_id(Some(&span_bytes)), span_id(None));
    }

    #[test]
    fn the_longest_span_does_not_wrap_to_zero() {
        let service = Arc::from("ide");
        let span = Span {
            name: "program_execution".into(),
            start_time_unix_nano: 0,
            end_time_unix_nano: u64::MAX,
            ..Default::default()
        };
        let event = UsageEvent::from_span(span, None, &origin(&service)).unwrap();
        assert_eq!(
            event.span.unwrap().duration_ms,
            (u64::MAX / 1_000_000) as i64
        );
    }

    #[test]
    fn span_duration_status_and_id() {
        let service = Arc::from("ide");
        let span = Span {
            name: "program_execution".into(),
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_250_400_000,
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: "SYNTAX ERROR IN 20".into(),
            }),
            ..Default::default()
        };
        let event = UsageEvent::from_span(span.clone(), None, &origin(&service)).unwrap();
        let facts = event.span.unwrap();
        assert_eq!(facts.duration_ms, 250);
        assert_eq!(facts.error.as_deref(), Some("SYNTAX ERROR IN 20"));
        assert_eq!(event.time_unix_nano, 1_000_000_000);
        let again = UsageEvent::from_span(span.clone(), None, &origin(&service)).unwrap();
        assert_eq!(event.id, again.id);
        let backwards = Span {
            end_time_unix_nano: 1,
            ..span
        };
        assert!(matches!(
            UsageEvent::from_span(backwards, None, &origin(&service)),
            Err(DecodeError::NegativeDuration { .. })
        ));
    }
}
