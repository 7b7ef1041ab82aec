//! OTLP/HTTP: `POST /v1/logs` and `/v1/traces`, protobuf (`application/x-protobuf`) or JSON
//! (`application/json`), optionally gzip-compressed, with CORS for listed browser origins.
//!
//! Every request takes the gRPC services' own path ([`Logs`] and [`Traces`], then
//! [`Ingest::export`]): admission, tokens, decoding on the decode threads, validation, the spool
//! (answered only once the request is fsynced) and partial success. What is HTTP's own happens
//! first, cheapest first, before the body is read: the route and method, the content type, the
//! bearer token, `Content-Length` against the size limit, and the shutdown gate. The body then
//! takes its share of the in-flight budget (its `Content-Length`, or the most a body may be when
//! chunked) before it is read under a time limit and a byte limit; that share moves with the
//! request's memory until the request is done: grown by the limit while a gzip body is inflated
//! on a decode thread through a reader that stops one byte past `max_request_bytes` (a few
//! kilobytes that inflate to gigabytes cost only the limit); grown to a JSON body's price
//! ([`json_cost`]) while a decode thread turns it into the protobuf bytes the common path
//! takes (opentelemetry-proto's serde mapping, which is the OTLP/JSON one: lowerCamelCase
//! names, hex trace and span ids, 64-bit integers as strings or numbers, enums as integers,
//! base64 bytes values, unknown fields ignored); then handed to admission, which turns it into
//! the request's decoded cost. A share is never given back while the memory it stands for is
//! still held.
//!
//! Answers follow the OTLP/HTTP specification, in the request's encoding:
//!
//! | status | when | body |
//! |---|---|---|
//! | 200 | accepted (all, or some: `partial_success`) | `Export*ServiceResponse` |
//! | 400 | undecodable protobuf, JSON or gzip | `google.rpc.Status` |
//! | 401 / 403 | no known bearer token / a service the token may not write as | `google.rpc.Status` |
//! | 404 / 405 | another path / another method | `google.rpc.Status` |
//! | 408 | the body did not arrive within the request timeout | `google.rpc.Status` |
//! | 413 | over `max_request_bytes` (after decompression) or the record limit | `google.rpc.Status` |
//! | 415 | another content type or content encoding | `google.rpc.Status` |
//! | 429 / 503 | in-flight budget (also for the body, before it is read) / spool full or shutting down; `Retry-After` | `google.rpc.Status` |
//! | 500 | decoding failed unexpectedly (a panic on a decode thread, logged) | `google.rpc.Status` |
//! | 501 | `/v1/metrics` (this collector takes usage events only) | `google.rpc.Status` |
//!
//! With the OTLP listener's TLS settings, this listener takes TLS too (its own handshakes, in
//! each connection's task, offering only `http/1.1` in ALPN, since it speaks HTTP/1.1); the
//! connection server is generic over the connection's IO ([`serve_connection`]).

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::admission::{RETRY_DELAY, Reserved};
use super::auth::{Allowed, Tokens};
use super::grpc::{Logs, Traces};
use super::ingest::{Caller, Ingest};
use crate::config::{ConnectionSettings, CorsOrigins};
use crate::event::Signal;
use crate::health::metrics::{HttpLabels, ReasonLabels};
use crate::net::Incoming;
use crate::net::tls::Security;

/// The media type of OTLP/HTTP protobuf.
pub const PROTOBUF: &str = "application/x-protobuf";
/// The media type of OTLP/HTTP JSON.
pub const JSON: &str = "application/json";
/// The request headers a browser may send (answer to a CORS preflight): those OTLP/HTTP
/// clients set (the OpenTelemetry JS exporters set `Content-Type` and whatever headers they are
/// configured with, typically `Authorization`).
pub const CORS_ALLOW_HEADERS: &str = "content-type, content-encoding, authorization, accept";
/// How long a browser may cache a preflight answer, in seconds (Chromium's own cap).
pub const CORS_MAX_AGE: &str = "7200";
/// Bytes one `{` of a JSON request may cost once parsed (a `KeyValue`, `AnyValue`, record or
/// other message, with its vector's spare room).
const JSON_OBJECT_COST: usize = 192;
/// Times a JSON request's own bytes are held while it is turned into protobuf (the body, the
/// parsed strings, the protobuf bytes).
const JSON_BYTES_FACTOR: usize = 3;
/// Most bytes of a refused body read for a client without a valid token or permission.
const UNTRUSTED_DRAIN: usize = 64 << 10;

/// The bytes of the in-flight budget a JSON request takes while it is turned into protobuf:
/// every `{` (counted even inside strings, so never too few) priced as a parsed message.
pub fn json_cost(body: &[u8]) -> usize {
    let objects = body.iter().filter(|&&b| b == b'{').count();
    objects * JSON_OBJECT_COST + body.len() * JSON_BYTES_FACTOR
}

/// How the OTLP/HTTP server treats requests and connections.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Largest request after decompression.
    pub max_request_bytes: usize,
    /// Timeouts and limits per connection.
    pub connections: ConnectionSettings,
    /// Bearer tokens, when a tokens file is set.
    pub tokens: Option<Arc<Tokens>>,
    /// Browser origins answered with CORS headers.
    pub cors: CorsOrigins,
}

/// A request body's encoding, which is also its answer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }

    /// The encoding named by a `Content-Type` (parameters such as `charset` ignored).
    fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case(PROTOBUF) {
            Some(Encoding::Protobuf)
        } else if media.eq_ignore_ascii_case(JSON) {
            Some(Encoding::Json)
        } else {
            None
        }
    }
}

/// What a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Logs,
    Traces,
    Metrics,
    Other,
}

impl Route {
    fn of(path: &str) -> Self {
        match path.strip_suffix('/').unwrap_or(path) {
            "/v1/logs" => Route::Logs,
            "/v1/traces" => Route::Traces,
            "/v1/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    /// Its value of the `signal` label.
    fn label(self) -> &'static str {
        match self {
            Route::Logs => Signal::Log.as_str(),
            Route::Traces => Signal::Span.as_str(),
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// A refusal: the HTTP status, and the gRPC status whose code and message make the body.
struct Refusal {
    http: StatusCode,
    status: Status,
}

impl Refusal {
    fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            http,
            status: Status::new(code, message),
        }
    }
}

/// The HTTP status for a refusal from the common path, per the OTLP/HTTP specification.
fn http_status(status: &Status) -> StatusCode {
    match status.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        // With RetryInfo: the in-flight budget is in use, waiting helps. Without: the request
        // itself is too large (records, or the spool's record size), waiting does not.
        Code::ResourceExhausted if status.get_details_retry_info().is_some() => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The body of a refusal: `google.rpc.Status` (with its details, such as RetryInfo) as
/// protobuf or as OTLP/JSON.
fn status_body(status: &Status, encoding: Encoding) -> Result<Vec<u8>, serde_json::Error> {
    let rpc = tonic_types::pb::Status::decode(status.details())
        .ok()
        .filter(|s| s.code != 0)
        .unwrap_or_else(|| tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        });
    match encoding {
        Encoding::Protobuf => Ok(rpc.encode_to_vec()),
        Encoding::Json => {
            let details: Vec<serde_json::Value> = status
                .get_details_retry_info()
                .into_iter()
                .map(|retry| {
                    let delay = retry.retry_delay.unwrap_or(RETRY_DELAY);
                    serde_json::json!({
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": format!("{}s", delay.as_secs_f64()),
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "code": rpc.code,
                "message": rpc.message,
                "details": details,
            }))
        }
    }
}

/// Whole seconds a client is told to wait: the RetryInfo's delay, rounded up.
fn retry_after(status: &Status) -> HeaderValue {
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(RETRY_DELAY);
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn respond(http: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = http;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The answer when an answer's body cannot be made (logged with what it was to say).
fn unanswerable(error: &serde_json::Error, what: &str) -> Response<Full<Bytes>> {
    tracing::error!(error = %error, what, "cannot encode an OTLP/HTTP answer; answering 500");
    respond(
        StatusCode::INTERNAL_SERVER_ERROR,
        JSON,
        br#"{"code":13,"message":"the collector could not encode its answer","details":[]}"#
            .to_vec(),
    )
}

fn refuse(refusal: Refusal, encoding: Encoding) -> Response<Full<Bytes>> {
    let Refusal { http, status } = refusal;
    let body = match status_body(&status, encoding) {
        Ok(body) => body,
        Err(e) => return unanswerable(&e, status.message()),
    };
    let mut response = respond(http, encoding.content_type(), body);
    if matches!(
        http,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after(&status));
    }
    response
}

/// Why a request body could not become an export request's protobuf bytes.
#[derive(Debug, thiserror::Error)]
pub enum Unpacked {
    /// Inflated past the size limit (inflating stopped there).
    #[error("the request is larger than {limit} bytes once decompressed (max_request_bytes)")]
    TooLarge {
        /// `max_request_bytes`.
        limit: usize,
    },
    /// Not gzip.
    #[error("the body is not valid gzip: {0}")]
    Gzip(std::io::Error),
    /// Not an OTLP/JSON export request.
    #[error("the body is not a valid OTLP/JSON export request: {0}")]
    Json(serde_json::Error),
}

/// A request body as the protobuf bytes of its export request: inflated when `gzip` (at most
/// `limit` bytes), turned from OTLP/JSON into protobuf when `json`. What the decode threads run
/// for a request (and the fuzz target `otlp_http` drives).
pub fn unpack_body(
    body: Bytes,
    gzip: bool,
    json: bool,
    signal: Signal,
    limit: usize,
) -> Result<Bytes, Unpacked> {
    let bytes = inflate(body, gzip, limit)?;
    if !json {
        return Ok(bytes);
    }
    match signal {
        Signal::Log => transcode::<ExportLogsServiceRequest>(&bytes),
        Signal::Span => transcode::<ExportTraceServiceRequest>(&bytes),
    }
}

/// Inflates `body` when `gzip`, refusing more than `limit` bytes without inflating further.
fn inflate(body: Bytes, gzip: bool, limit: usize) -> Result<Bytes, Unpacked> {
    if !gzip {
        return if body.len() > limit {
            Err(Unpacked::TooLarge { limit })
        } else {
            Ok(body)
        };
    }
    let mut out = Vec::with_capacity((body.len() * 4).min(limit));
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Unpacked::Gzip)?;
    if out.len() > limit {
        return Err(Unpacked::TooLarge { limit });
    }
    Ok(out.into())
}

/// An OTLP/JSON export request as the protobuf bytes of the same request.
fn transcode<R>(json: &[u8]) -> Result<Bytes, Unpacked>
where
    R: Message + serde::de::DeserializeOwned,
{
    let request: R = serde_json::from_slice(json).map_err(Unpacked::Json)?;
    Ok(request.encode_to_vec().into())
}

/// The success answer in the request's encoding (a JSON answer without `partialSuccess` is
/// `{}`, as protobuf's is empty).
fn success<T: Message + serde::Serialize>(
    response: &T,
    encoding: Encoding,
) -> Result<Vec<u8>, serde_json::Error> {
    match encoding {
        Encoding::Protobuf => Ok(response.encode_to_vec()),
        Encoding::Json => {
            let mut value = serde_json::to_value(response)?;
            if let serde_json::Value::Object(map) = &mut value {
                map.retain(|_, v| !v.is_null());
            }
            serde_json::to_vec(&value)
        }
    }
}

/// The OTLP/HTTP request handler, shared by every connection.
struct Receiver {
    logs: Logs,
    traces: Traces,
    ingest: Ingest,
    max_request_bytes: usize,
    request_timeout: Duration,
    tokens: Option<Arc<Tokens>>,
    cors: CorsOrigins,
}

impl Receiver {
    /// Answers one request, with CORS headers for a listed origin, and counts the answer.
    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let route = Route::of(request.uri().path());
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| self.cors.allows(o)))
            .cloned();
        let (parts, body) = request.into_parts();
        let mut body = Some(body);
        let mut response = if parts.method == Method::OPTIONS
            && !self.cors.0.is_empty()
            && parts.headers.contains_key(header::ORIGIN)
        {
            self.preflight(route, origin.is_some())
        } else {
            self.answer(route, &parts, &mut body).await
        };
        if let Some(body) = body {
            // Refused before its body was read: read it to the end (discarding it, up to a
            // bound) so the client, still sending, hears the answer instead of a broken pipe.
            // A client that waits for `100 Continue` has sent nothing and is told no more.
            let waits = parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            let declared = content_length(&parts.headers);
            let drain = drain_limit(self.max_request_bytes, response.status(), declared);
            let drained = match drain {
                Some(limit) if !waits => {
                    tokio::time::timeout(self.request_timeout, discard(body, limit)).await
                }
                // Told no more, or more than would be read: the connection is closed instead.
                _ => Ok(false),
            };
            if !matches!(drained, Ok(true)) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        if let Some(origin) = origin {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            // `navigator.sendBeacon` (what the OpenTelemetry JS exporters use when no headers
            // are configured) sends with credentials; the collector reads no cookies, and the
            // origin is one of the listed ones, never `*`.
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("Retry-After"),
            );
        }
        self.ingest
            .metrics
            .http_requests
            .get_or_create(&HttpLabels {
                signal: route.label(),
                code: code_label(response.status()),
            })
            .inc();
        response
    }

    /// A CORS preflight: allowed for a listed origin on an OTLP path.
    fn preflight(&self, route: Route, listed: bool) -> Response<Full<Bytes>> {
        if !listed {
            return refuse(
                Refusal::new(
                    StatusCode::FORBIDDEN,
                    Code::PermissionDenied,
                    "this origin is not among the collector's CORS origins (http_cors_origins)",
                ),
                Encoding::Json,
            );
        }
        if route == Route::Other {
            return not_found(Encoding::Json);
        }
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(CORS_MAX_AGE),
        );
        response
    }

    /// Answers a request; takes its body out of `body` if it reads it.
    async fn answer(
        &self,
        route: Route,
        request: &http::request::Parts,
        body: &mut Option<hyper::body::Incoming>,
    ) -> Response<Full<Bytes>> {
        let encoding = Encoding::of(&request.headers);
        if route == Route::Other {
            return not_found(encoding.unwrap_or(Encoding::Json));
        }
        if request.method != Method::POST {
            let mut response = refuse(
                Refusal::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    Code::Unimplemented,
                    format!("{} takes POST only", request.uri.path()),
                ),
                encoding.unwrap_or(Encoding::Json),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let Some(encoding) = encoding else {
            let mut response = refuse(
                Refusal::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Code::InvalidArgument,
                    format!(
                        "unsupported content type {:?}: send {PROTOBUF} or {JSON}",
                        request
                            .headers
                            .get(header::CONTENT_TYPE)
                            .map(|v| String::from_utf8_lossy(v.as_bytes())
                                .chars()
                                .take(100)
                                .collect::<String>())
                            .unwrap_or_default()
                    ),
                ),
                Encoding::Json,
            );
            response.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static("application/x-protobuf, application/json"),
            );
            self.count_refused("unsupported_media_type");
            return response;
        };
        let signal = match route {
            Route::Logs => Signal::Log,
            Route::Traces => Signal::Span,
            Route::Metrics => {
                return refuse(
                    Refusal {
                        http: StatusCode::NOT_IMPLEMENTED,
                        status: super::grpc::no_metrics(),
                    },
                    encoding,
                );
            }
            Route::Other => unreachable!("answered above"),
        };
        match self.accept(signal, encoding, request, body).await {
            Ok(Ok(body)) => respond(StatusCode::OK, encoding.content_type(), body),
            Ok(Err(e)) => unanswerable(&e, "the export response"),
            Err(refusal) => refuse(refusal, encoding),
        }
    }

    fn count_refused(&self, reason: &'static str) {
        self.ingest
            .metrics
            .requests_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    fn refuse_request(&self, reason: &'static str, refusal: Refusal) -> Refusal {
        self.count_refused(reason);
        tracing::debug!(
            reason,
            message = refusal.status.message(),
            "OTLP/HTTP request refused"
        );
        refusal
    }

    /// The checks before the body, the body, and the common path.
    async fn accept(
        &self,
        signal: Signal,
        encoding: Encoding,
        request: &http::request::Parts,
        body: &mut Option<hyper::body::Incoming>,
    ) -> Result<Result<Vec<u8>, serde_json::Error>, Refusal> {
        let headers = &request.headers;
        let allowed = match &self.tokens {
            None => Allowed::Any,
            Some(tokens) => tokens
                .check(headers.get(header::AUTHORIZATION))
                .map_err(|status| {
                    self.refuse_request(
                        "unauthenticated",
                        Refusal {
                            http: StatusCode::UNAUTHORIZED,
                            status,
                        },
                    )
                })?,
        };
        let gzip = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "identity") => false,
            Some("gzip" | "x-gzip") => true,
            Some(other) => {
                return Err(self.refuse_request(
                    "unsupported_media_type",
                    Refusal::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        Code::InvalidArgument,
                        format!("unsupported content encoding {other:?}: send gzip or none"),
                    ),
                ));
            }
        };
        let limit = self.max_request_bytes;
        // gzip adds a few bytes to data it cannot compress.
        let wire_limit = if gzip {
            limit + limit / 64 + 1024
        } else {
            limit
        };
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::ResourceExhausted,
                format!(
                    "the request is larger than {limit} bytes{} (max_request_bytes); send smaller batches",
                    if gzip { " once decompressed" } else { "" }
                ),
            )
        };
        let declared = content_length(headers);
        if declared.is_some_and(|n| n > wire_limit as u64) {
            return Err(self.refuse_request("too_large", too_large()));
        }
        self.ingest.gate(signal).map_err(|status| Refusal {
            http: StatusCode::SERVICE_UNAVAILABLE,
            status,
        })?;
        // The body's bytes take their share of the in-flight budget before they are read: as
        // many as declared, or the most a body may have (chunked). Refused, the body is left
        // unread.
        let wire_cost = declared.map_or(wire_limit, |n| n as usize);
        let mut reserved = self.reserve(None, wire_cost).await?;
        let Some(incoming) = body.take() else {
            unreachable!("the body is read once");
        };
        let drain = drain_limit(limit, StatusCode::PAYLOAD_TOO_LARGE, None).unwrap_or_default();
        let body =
            match tokio::time::timeout(self.request_timeout, read(incoming, wire_limit, drain))
                .await
            {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(BodyError::TooLarge)) => {
                    return Err(self.refuse_request("too_large", too_large()));
                }
                Ok(Err(BodyError::Failed(e))) => {
                    return Err(self.refuse_request(
                        "incomplete_body",
                        Refusal::new(
                            StatusCode::BAD_REQUEST,
                            Code::InvalidArgument,
                            format!("cannot read the request body: {e}"),
                        ),
                    ));
                }
                Err(_) => {
                    return Err(self.refuse_request(
                        "timeout",
                        Refusal::new(
                            StatusCode::REQUEST_TIMEOUT,
                            Code::DeadlineExceeded,
                            format!(
                                "the request body did not arrive within {} s",
                                self.request_timeout.as_secs()
                            ),
                        ),
                    ));
                }
            };
        reserved.shrink_to(body.len());
        let (bytes, reserved) = self.unpack(signal, encoding, body, gzip, reserved).await?;
        let reserved = Some(reserved);
        let caller = Caller::of("http", headers);
        match signal {
            Signal::Log => self
                .logs
                .export_reserved(bytes, allowed, caller, reserved)
                .await
                .map(|response| success(&response, encoding)),
            Signal::Span => self
                .traces
                .export_reserved(bytes, allowed, caller, reserved)
                .await
                .map(|response| success(&response, encoding)),
        }
        .map_err(|status| Refusal {
            http: http_status(&status),
            status,
        })
    }

    /// Makes `held` (or a new share) `cost` bytes of the in-flight budget.
    async fn reserve(&self, held: Option<Reserved>, cost: usize) -> Result<Reserved, Refusal> {
        self.ingest
            .admission
            .reserve(held, cost)
            .await
            .map_err(|status| Refusal {
                http: http_status(&status),
                status,
            })
    }

    /// The request's protobuf bytes: inflated when gzip, transcoded when JSON, on a decode
    /// thread; with `reserved`, the budget held for them (what the body took, grown for the
    /// work, then what the result holds).
    async fn unpack(
        &self,
        signal: Signal,
        encoding: Encoding,
        body: Bytes,
        gzip: bool,
        reserved: Reserved,
    ) -> Result<(Bytes, Reserved), Refusal> {
        if !gzip && encoding == Encoding::Protobuf {
            // Already within the limit (the body's own).
            return Ok((body, reserved));
        }
        let limit = self.max_request_bytes;
        let decoders = &self.ingest.decoders;
        let failed = |e: super::decoders::Failed| {
            let status = e.status();
            Refusal {
                http: http_status(&status),
                status,
            }
        };
        let (bytes, reserved) = if gzip {
            // The compressed body and up to `limit` inflated bytes, held together.
            let mut reserved = self
                .reserve(Some(reserved), body.len().saturating_add(limit))
                .await?;
            let (inflated, reserved) = decoders
                .run(move || {
                    let inflated = inflate(body, true, limit);
                    reserved.shrink_to(inflated.as_ref().map_or(0, Bytes::len));
                    (inflated, reserved)
                })
                .await
                .map_err(failed)?;
            (inflated.map_err(|e| self.unpacked(e))?, reserved)
        } else {
            (body, reserved)
        };
        if encoding == Encoding::Protobuf {
            return Ok((bytes, reserved));
        }
        let mut reserved = self.reserve(Some(reserved), json_cost(&bytes)).await?;
        let (transcoded, reserved) = decoders
            .run(move || {
                let transcoded = unpack_body(bytes, false, true, signal, limit);
                reserved.shrink_to(transcoded.as_ref().map_or(0, Bytes::len));
                (transcoded, reserved)
            })
            .await
            .map_err(failed)?;
        Ok((transcoded.map_err(|e| self.unpacked(e))?, reserved))
    }

    fn unpacked(&self, error: Unpacked) -> Refusal {
        match error {
            Unpacked::TooLarge { .. } => self.refuse_request(
                "too_large",
                Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::ResourceExhausted,
                    format!("{error}; send smaller batches"),
                ),
            ),
            Unpacked::Gzip(_) | Unpacked::Json(_) => self.refuse_request(
                "malformed",
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    error.to_string(),
                ),
            ),
        }
    }
}

/// Most bytes of a refused request's body read and discarded before answering, so that a
/// client still sending hears the answer: none when the body is declared longer than that (it
/// could not be read to its end; the connection is closed instead), a little for a client
/// without a valid token (no reason to read its bytes), else four times the size limit.
fn drain_limit(
    max_request_bytes: usize,
    status: StatusCode,
    declared: Option<u64>,
) -> Option<usize> {
    let limit = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UNTRUSTED_DRAIN,
        _ => max_request_bytes.saturating_mul(4).max(1 << 20),
    };
    match declared {
        Some(n) if n > limit as u64 => None,
        _ => Some(limit),
    }
}

/// The body length a request declares.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Why a body was not read.
enum BodyError {
    /// Past the limit (the rest read and discarded, up to the drain limit).
    TooLarge,
    /// The connection failed.
    Failed(hyper::Error),
}

/// Reads a body of at most `limit` bytes; past it, reads on (discarding) up to `drain` bytes
/// so the answer reaches a client still sending.
async fn read(
    mut body: hyper::body::Incoming,
    limit: usize,
    drain: usize,
) -> Result<Bytes, BodyError> {
    let mut out = prost::bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Failed)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                let seen = out.len() + data.len();
                drop(out);
                discard(body, drain.saturating_sub(seen)).await;
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Reads and drops a body, up to `limit` bytes; true when it was read to its end.
async fn discard(mut body: hyper::body::Incoming, limit: usize) -> bool {
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len();
                    if seen > limit {
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn not_found(encoding: Encoding) -> Response<Full<Bytes>> {
    refuse(
        Refusal::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "no such path: OTLP/HTTP takes POST /v1/logs and /v1/traces",
        ),
        encoding,
    )
}

/// The `code` label of an answer (the statuses this server gives, and `other`).
fn code_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        501 => "501",
        503 => "503",
        _ => "other",
    }
}

/// How long a connection is given to finish its request once asked to close.
fn grace(connections: &ConnectionSettings) -> Duration {
    connections.http_request_timeout
}

/// Serves HTTP/1.1 on one connection until it closes, lives past the connection age (then it
/// finishes its request and closes), or `stop` is set (the same).
async fn serve_connection<IO>(
    io: IO,
    receiver: Arc<Receiver>,
    connections: ConnectionSettings,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper::service::service_fn(move |request| {
        let receiver = receiver.clone();
        async move { Ok::<_, Infallible>(receiver.handle(request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(connections.http_request_timeout)
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        _ = stop.wait_for(|stop| *stop) => None,
        () = tokio::time::sleep(connections.max_age) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace(&connections), connection).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!("OTLP/HTTP connection closed: its request took too long");
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "OTLP/HTTP connection ended with an error");
    }
}

/// Serves OTLP/HTTP on `incoming`, secured as `security` says (plain HTTP or HTTPS), until
/// `shutdown` completes; then stops accepting, lets each connection finish its request, and
/// returns once all have closed.
pub async fn serve(
    incoming: Incoming,
    security: Security,
    ingest: Ingest,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send,
) {
    let Serving {
        max_request_bytes,
        connections,
        tokens,
        cors,
    } = serving;
    let receiver = Arc::new(Receiver {
        logs: Logs(ingest.clone()),
        traces: Traces(ingest.clone()),
        ingest,
        max_request_bytes,
        request_timeout: connections.http_request_timeout,
        tokens,
        cors,
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => log_join(joined),
            // An accept error is logged by `accept`, which pauses before returning it.
            accepted = incoming.accept("otlp_http") => if let Ok(stream) = accepted {
                let (security, receiver) = (security.clone(), receiver.clone());
                let (connections, stopped) = (connections.clone(), stopped.clone());
                tasks.spawn(async move {
                    // A failed TLS handshake is counted and logged by the handshake.
                    let Ok(stream) = security.secure(stream).await else {
                        return;
                    };
                    serve_connection(stream, receiver, connections, stopped).await;
                });
            },
        }
    }
    drop(incoming);
    // Every connection task holds a receiver, so this cannot fail while one runs.
    stop.send_replace(true);
    while let Some(joined) = tasks.join_next().await {
        log_join(joined);
    }
}

fn log_join(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "an OTLP/HTTP connection task ended abnormally");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_inflated_only_up_to_the_limit() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = Bytes::from(encoder.finish().unwrap());
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert!(matches!(
            inflate(bomb.clone(), true, 1 << 20),
            Err(Unpacked::TooLarge { limit }) if limit == 1 << 20
        ));
        assert_eq!(inflate(bomb, true, 10 << 20).unwrap().len(), 10 << 20);
        assert!(matches!(
            inflate(Bytes::from_static(b"not gzip"), true, 100),
            Err(Unpacked::Gzip(_))
        ));
    }

    /// The OTLP/JSON mapping as the specification's examples write it: hex ids, 64-bit
    /// integers as strings and as numbers, enums as integers, unknown fields ignored.
    #[test]
    fn otlp_json_becomes_the_same_request_as_protobuf() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web-ide"}}]},
            "scopeSpans":[{"scope":{"name":"ide","version":"1.0.0"},"spans":[{
              "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174",
              "parentSpanId":"","name":"program_execution","kind":2,
              "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
              "attributes":[{"key":"program.lines","value":{"intValue":"12"}},
                            {"key":"n","value":{"intValue":7}},
                            {"key":"ok","value":{"boolValue":true}},
                            {"key":"ratio","value":{"doubleValue":0.5}},
                            {"key":"raw","value":{"bytesValue":"aGk="}}],
              "status":{"code":2,"message":"DIVISION BY ZERO"},"futureField":{"x":1}}]}]}]}"#;
        let bytes = transcode::<ExportTraceServiceRequest>(json).unwrap();
        let request = ExportTraceServiceRequest::decode(bytes).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.trace_id,
            [
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c
            ]
        );
        assert_eq!(
            span.span_id,
            [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        let values: Vec<_> = span
            .attributes
            .iter()
            .map(|kv| kv.value.as_ref().unwrap().value.clone().unwrap())
            .collect();
        assert_eq!(
            values,
            [
                Value::IntValue(12),
                Value::IntValue(7),
                Value::BoolValue(true),
                Value::DoubleValue(0.5),
                Value::BytesValue(b"hi".to_vec())
            ]
        );
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert!(matches!(
            transcode::<ExportTraceServiceRequest>(
                b"{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"traceId\":\"xyz\"}]}]}]}"
            ),
            Err(Unpacked::Json(_))
        ));
    }

    #[test]
    fn refusals_map_to_the_otlp_http_statuses() {
        use super::super::admission::retryable;
        let cases = [
            (Status::invalid_argument("x"), 400),
            (Status::unauthenticated("x"), 401),
            (Status::permission_denied("x"), 403),
            (Status::resource_exhausted("x"), 413),
            (retryable(Code::ResourceExhausted, "x".into()), 429),
            (retryable(Code::Unavailable, "x".into()), 503),
            (Status::unimplemented("x"), 501),
            (Status::internal("x"), 500),
        ];
        for (status, code) in cases {
            assert_eq!(http_status(&status).as_u16(), code, "{status:?}");
        }
        let retry = retryable(Code::Unavailable, "full".into());
        assert_eq!(retry_after(&retry), "2");
        let json: serde_json::Value =
            serde_json::from_slice(&status_body(&retry, Encoding::Json).unwrap()).unwrap();
        assert_eq!(json["code"], 14);
        assert_eq!(json["message"], "full");
        assert_eq!(json["details"][0]["retryDelay"], "2s");
        let proto =
            tonic_types::pb::Status::decode(&status_body(&retry, Encoding::Protobuf).unwrap()[..])
                .unwrap();
        assert_eq!((proto.code, proto.message.as_str()), (14, "full"));
        assert_eq!(proto.details.len(), 1);
        // A panic on a decode thread is final (500, no Retry-After); a stop is retryable.
        use super::super::decoders::Failed;
        assert_eq!(http_status(&Failed::Panicked.status()).as_u16(), 500);
        assert_eq!(http_status(&Failed::Stopped.status()).as_u16(), 503);
    }

    #[test]
    fn a_refused_body_is_drained_only_when_it_can_be_and_little_for_strangers() {
        let limit = 4 << 20;
        let big = Some(16 << 20);
        assert_eq!(
            drain_limit(limit, StatusCode::PAYLOAD_TOO_LARGE, None),
            big.map(|n| n as usize)
        );
        assert_eq!(
            drain_limit(limit, StatusCode::PAYLOAD_TOO_LARGE, big),
            Some(16 << 20)
        );
        assert_eq!(
            drain_limit(limit, StatusCode::PAYLOAD_TOO_LARGE, Some((16 << 20) + 1)),
            None
        );
        assert_eq!(
            drain_limit(limit, StatusCode::UNAUTHORIZED, Some(1000)),
            Some(64 << 10)
        );
        assert_eq!(
            drain_limit(limit, StatusCode::FORBIDDEN, None),
            Some(64 << 10)
        );
        assert_eq!(
            drain_limit(limit, StatusCode::UNAUTHORIZED, Some(1 << 20)),
            None
        );
        // Small limits still drain a megabyte.
        assert_eq!(
            drain_limit(1000, StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
            Some(1 << 20)
        );
    }
}
