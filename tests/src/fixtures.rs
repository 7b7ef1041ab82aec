//! OTLP requests for tests, and the clients that send them.

use std::net::SocketAddr;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, status::StatusCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;

/// 2026-03-04 05:06:07.123456 UTC, in ns: a time whose microseconds survive every database.
pub const T0: u64 = 1_772_600_767_123_456_000;

/// One second in ns.
pub const SECOND: u64 = 1_000_000_000;

/// An attribute value.
pub fn v(value: impl Into<Val>) -> AnyValue {
    AnyValue {
        value: Some(value.into().0),
    }
}

/// Wrapper so literals convert into OTLP values.
pub struct Val(Value);

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val(Value::StringValue(s.to_owned()))
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val(Value::StringValue(s))
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val(Value::IntValue(i))
    }
}
impl From<f64> for Val {
    fn from(d: f64) -> Self {
        Val(Value::DoubleValue(d))
    }
}
impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Val(Value::BoolValue(b))
    }
}
impl From<Value> for Val {
    fn from(value: Value) -> Self {
        Val(value)
    }
}

/// A key-value pair.
pub fn kv(key: &str, value: impl Into<Val>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(v(value)),
        ..Default::default()
    }
}

/// A string array value.
pub fn strings(items: &[&str]) -> Value {
    Value::ArrayValue(ArrayValue {
        values: items.iter().map(|s| v(*s)).collect(),
    })
}

/// A key-value list value.
pub fn kvlist(items: Vec<KeyValue>) -> Value {
    Value::KvlistValue(KeyValueList { values: items })
}

/// A log record carrying a usage event in the `event_name` field.
pub fn event(name: &str, time: u64, attributes: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        event_name: name.to_owned(),
        time_unix_nano: time,
        observed_time_unix_nano: time + 1_000,
        attributes,
        ..Default::default()
    }
}

/// A logs request from `service` of one page visit to `path` at `T0 + t` for each `t` in
/// `times` (ns after [`T0`]).
pub fn page_visits(
    service: &str,
    path: &str,
    times: std::ops::Range<u64>,
) -> ExportLogsServiceRequest {
    let visits = times
        .map(|t| event("page_visit", T0 + t, vec![kv("url.path", path)]))
        .collect();
    logs_request(service, visits)
}

/// A logs request from `web-ide` of `records` mixed events, as the receive-path benchmarks
/// send them: page visits, program runs, feature use and custom events in turn, 64 sessions,
/// a millisecond apart, with `event.id` on every record (`ids`) or on none (derived ids).
pub fn mixed_usage(records: u64, ids: bool) -> ExportLogsServiceRequest {
    let events = (0..records)
        .map(|i| {
            let session = format!("session-{}", i % 64);
            let time = T0 + i * 1_000_000;
            let mut attributes = match i % 4 {
                0 => vec![
                    kv("session.id", session.as_str()),
                    kv("url.path", "/ide/programs/42"),
                    kv(
                        "user_agent.original",
                        "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0",
                    ),
                    kv("client.address", "203.0.113.7"),
                ],
                1 => vec![
                    kv("session.id", session.as_str()),
                    kv("program.lines", 40i64),
                    kv("program.lines_executed", 1200i64),
                    kv("program.duration_ms", 12i64),
                    kv("program.success", true),
                ],
                2 => vec![
                    kv("session.id", session.as_str()),
                    kv("feature.name", "autosave"),
                    kv("feature.data", "{\"interval\":30}"),
                ],
                _ => vec![kv("pages", 3i64), kv("format", "a4")],
            };
            if ids {
                let id = uuid::Uuid::now_v7().to_string();
                attributes.insert(0, kv("event.id", id.as_str()));
            }
            let name = [
                "page_visit",
                "program_execution",
                "feature_use",
                "export_pdf",
            ];
            event(name[(i % 4) as usize], time, attributes)
        })
        .collect();
    logs_request("web-ide", events)
}

/// A span; `error` sets an error status with that message.
pub fn span(
    name: &str,
    id: u8,
    start: u64,
    end: u64,
    error: Option<&str>,
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: vec![0xab; 16],
        span_id: vec![id; 8],
        name: name.to_owned(),
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(match error {
            Some(message) => Status {
                code: StatusCode::Error as i32,
                message: message.to_owned(),
            },
            None => Status {
                code: StatusCode::Ok as i32,
                message: String::new(),
            },
        }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", service)],
        ..Default::default()
    })
}

/// A logs request from one service.
pub fn logs_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(service),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A traces request from one service.
pub fn traces_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The request with every scope of its spans named `scope` (an instrumentation library's, or
/// the usage-tracker's `usage`).
pub fn under_scope(
    mut request: ExportTraceServiceRequest,
    scope: &str,
) -> ExportTraceServiceRequest {
    for resource in &mut request.resource_spans {
        for spans in &mut resource.scope_spans {
            spans.scope = Some(InstrumentationScope {
                name: scope.to_owned(),
                version: "1.0.0".to_owned(),
                ..Default::default()
            });
        }
    }
    request
}

/// Sends a logs request (gzip-compressed when `gzip`, and then taking a gzip-compressed answer,
/// which Go's gRPC servers send to a client that compresses, as an SDK does).
pub async fn send_logs(
    endpoint: &str,
    request: ExportLogsServiceRequest,
    gzip: bool,
) -> Result<ExportLogsServiceResponse, tonic::Status> {
    let mut client = LogsServiceClient::connect(endpoint.to_owned())
        .await
        .expect("connect to the collector")
        .max_encoding_message_size(usize::MAX);
    if gzip {
        client = client
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
    }
    client
        .export(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Sends a traces request.
pub async fn send_traces(
    endpoint: &str,
    request: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client = TraceServiceClient::connect(endpoint.to_owned())
        .await
        .expect("connect to the collector");
    client
        .export(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `ExportLogsServiceRequest { resource_logs { scope_logs { log_records × n (empty) } } }`,
/// encoded by hand: two bytes per record, so a few kilobytes of gzip hold millions.
pub fn empty_records(n: usize) -> Vec<u8> {
    let mut scope = Vec::with_capacity(2 * n);
    for _ in 0..n {
        scope.extend_from_slice(&[0x12, 0x00]);
    }
    let mut resource = Vec::new();
    prost::encoding::bytes::encode(2, &scope, &mut resource);
    let mut request = Vec::new();
    prost::encoding::bytes::encode(1, &resource, &mut request);
    request
}

/// A request of 1 000 feature uses with about 4 KB of data each: nearly 4 MiB, within the
/// default size limit, for filling a spool.
pub fn large_feature_uses(service: &str) -> ExportLogsServiceRequest {
    let records = (0..1_000u64)
        .map(|i| {
            event(
                "feature_use",
                T0 + i,
                vec![
                    kv("event.id", uuid::Uuid::now_v7().to_string()),
                    kv("feature.name", "export"),
                    kv(
                        "feature.data",
                        format!("{{\"blob\":\"{}\"}}", "d".repeat(3_900)),
                    ),
                ],
            )
        })
        .collect();
    logs_request(service, records)
}
